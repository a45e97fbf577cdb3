def parse_head(data: bytes, line_end: int, end: int, /) -> (
        tuple[int, list[tuple[bytes, bytes]], bool, int, bool] | None): ...

VERSION: int
