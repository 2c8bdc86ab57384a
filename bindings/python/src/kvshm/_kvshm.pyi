# The C extension under kvshm (private): its functions and constants come
# from kvshm.h at build time, so the stub types them loosely.
from typing import Any

def __getattr__(name: str) -> Any: ...
