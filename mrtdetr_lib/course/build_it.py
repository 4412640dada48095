"""The chapters' "build it" cells: the learner's function against the library's, case by case.

A stub cell defines a function whose body is `raise NotImplementedError` until the learner writes
it; the check cell calls `compare`, which says "not written yet" for a stub, and otherwise whether
it gives the library's answer on every case. The folded reference answer below runs the same
check, so `pytest --nbval` exercises both paths.
"""

from typing import Any, Callable, Sequence

import numpy as np


def _array(value: Any) -> np.ndarray:
    """A paddle tensor, numpy array or list as a float64 numpy array."""
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float64)


def compare(yours: Callable, reference: Callable, cases: Sequence[tuple], name: str,
            atol: float = 1e-5) -> bool:
    """Call `yours(*case)` and `reference(*case)` for every case and print one line: not written
    yet, a shape that differs, or whether all values agree within `atol`. True if they agree."""
    largest = 0.0
    for number, case in enumerate(cases):
        try:
            got = _array(yours(*case))
        except NotImplementedError:
            print(f"{name}: not written yet (replace `raise NotImplementedError` in the cell "
                  "above, then run this cell again)")
            return False
        want = _array(reference(*case))
        if got.shape != want.shape:
            print(f"{name}: case {number} gives shape {list(got.shape)}, the library "
                  f"{list(want.shape)}")
            return False
        largest = max(largest, float(np.abs(got - want).max(initial=0.0)))
    if largest > atol:
        print(f"{name}: differs from the library by up to {largest:.3g} on the {len(cases)} "
              "cases")
        return False
    print(f"{name}: the library's answer on each of the {len(cases)} cases (within {atol:g})")
    return True
