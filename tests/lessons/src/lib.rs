//! Tests only: one file per lesson in `tests/`, the pages in `docs/lessons/`.
