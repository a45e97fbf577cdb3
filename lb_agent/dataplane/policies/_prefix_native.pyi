from collections.abc import Callable, Sequence
from typing import Any

def crc32(data: bytes, fold: bool, /) -> int: ...
def block_hashes(data: bytes, block: int, seed: int, /) -> list[int]: ...
def choose(candidates: Sequence[Any], key: list[int], young: dict[int, int],
           old: dict[int, int], bits: dict[str, int], balance_abs: float, balance_rel: float,
           per: float, randrange: Callable[[int], int], key_type: type[list[int]],
           credit: float, rid_hashes: dict[str, int], owed_per: float, turns: int,
           counts: list[int], /) -> Any: ...
def release(target: Any, key: Any, bits: dict[str, int], turns: int,
            key_type: type[list[int]], /) -> int | None: ...
def prompt_key(body: bytes, keys: tuple[bytes, ...], limit: int, block: int, seed: int,
               anchor_blocks: int, key_type: type[list[int]], /) -> list[int] | None: ...

VERSION: int
CRC_FOLD: int
