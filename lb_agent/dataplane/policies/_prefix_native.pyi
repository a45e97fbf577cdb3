from collections.abc import Callable, Sequence
from typing import Any

def block_hashes(data: bytes, block: int, seed: int, /) -> list[int]: ...
def scan(candidates: Sequence[Any], key: list[int], young: dict[int, int], old: dict[int, int],
         bits: dict[str, int], balance_abs: float, balance_rel: float, per: float,
         randrange: Callable[[int], int], anchor: int | None, credit: float,
         rid_hashes: dict[str, int], owed_per: float, /) -> Any: ...
def prompt_key(body: bytes, keys: tuple[bytes, ...], limit: int, block: int, seed: int,
               anchor_blocks: int, key_type: type[list[int]], /) -> list[int] | None: ...

VERSION: int
