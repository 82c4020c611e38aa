"""Old keyword names that keep working for one release, with a ``DeprecationWarning`` that names the new one."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["renamed_keywords"]

_Function = TypeVar("_Function", bound=Callable[..., Any])


def renamed_keywords(**new_names: str) -> Callable[[_Function], _Function]:
    """Lets a function (or a class's ``__init__``) take each old keyword in place of its new name.

    Args:
        new_names: the new name of each old keyword, e.g. ``blocks="attention_blocks"``.

    Returns:
        A decorator; a call with an old keyword warns (``DeprecationWarning``, naming the new keyword) and passes the
        value on under the new name. Passing both names raises a ``TypeError``.
    """

    def decorate(function: _Function) -> _Function:
        name = function.__qualname__.removesuffix(".__init__")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in new_names.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{name}() got both {old}= and its new name {new}=; pass only {new}=.")
                warnings.warn(
                    f"{name}({old}=...) is deprecated and goes in the next release; pass {new}= instead.",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
