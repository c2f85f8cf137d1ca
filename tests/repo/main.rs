//! The repository's shape: the layering of `src/` and the packaging files.

mod layering;
mod packaging;
