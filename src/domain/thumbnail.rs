//! A game's thumbnail, made by the worker from its cover (see
//! `processing::thumbnail`) and kept with the game.

use std::fmt;

/// A PNG-encoded thumbnail and its size in pixels.
#[derive(Clone, PartialEq, Eq)]
pub struct Thumbnail {
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Shows the size of the PNG rather than its bytes, which would flood logs.
impl fmt::Debug for Thumbnail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thumbnail")
            .field("png", &format_args!("<{} bytes>", self.png.len()))
            .field("width", &self.width)
            .field("height", &self.height)
            .finish()
    }
}
