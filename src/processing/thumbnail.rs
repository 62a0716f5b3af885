//! Thumbnails of game covers.
//!
//! A cover comes from a user upload or from an arbitrary URL, so its bytes are hostile
//! until proven otherwise: the format is guessed from the content (never from a file
//! name), and decoding runs under [`Limits`] so that a small file claiming to be a huge
//! image (a decompression bomb) is refused before its pixels are allocated.

use std::fmt;
use std::io::Cursor;

use image::{DynamicImage, ImageError, ImageFormat, ImageReader, Limits};

/// Widest or tallest image we agree to decode. Covers are a few hundred pixels across;
/// this leaves room for scans while keeping a single row's allocation small.
pub const MAX_DIMENSION: u32 = 8192;

/// Most memory the decoder may allocate for one image. The decoded pixels count towards
/// it, so an 8192×8192 RGBA image (256 MiB) is refused even though each side is allowed.
pub const MAX_ALLOC_BYTES: u64 = 64 * 1024 * 1024;

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

/// Why a cover could not be turned into a thumbnail. None of these get better on a retry:
/// the same bytes fail the same way.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("not an image in a supported format (PNG, JPEG, GIF, WebP, BMP): {0}")]
    Unsupported(ImageError),
    #[error("image is corrupt or truncated: {0}")]
    Corrupt(ImageError),
    #[error(
        "image is too large to decode (at most {max}×{max} pixels and {mib} MiB decoded): {0}",
        max = MAX_DIMENSION,
        mib = MAX_ALLOC_BYTES / (1024 * 1024)
    )]
    TooLarge(ImageError),
    #[error("could not encode the thumbnail as PNG: {0}")]
    Encode(ImageError),
}

/// Decodes `image` (PNG, JPEG, GIF, WebP or BMP, recognised by its content), scales it
/// down to fit within `max_side`×`max_side` keeping its aspect ratio, and encodes the
/// result as PNG. An image that already fits is re-encoded at its own size, never
/// enlarged. A `max_side` of 0 is treated as 1.
///
/// This is CPU-bound work that can take tens of milliseconds on a large cover: async
/// callers must run it with `tokio::task::spawn_blocking`, not on a runtime worker.
pub fn make_thumbnail(image: &[u8], max_side: u32) -> Result<Thumbnail, ThumbnailError> {
    let decoded = decode(image)?;
    let max_side = max_side.max(1);
    let scaled = if decoded.width() <= max_side && decoded.height() <= max_side {
        decoded
    } else {
        decoded.thumbnail(max_side, max_side)
    };
    // Thumbnails are for display: 8 bits per channel is enough, and an alpha channel
    // only when the source has one keeps opaque covers (JPEGs) small.
    let scaled = if scaled.color().has_alpha() {
        DynamicImage::ImageRgba8(scaled.to_rgba8())
    } else {
        DynamicImage::ImageRgb8(scaled.to_rgb8())
    };
    let mut png = Vec::new();
    scaled
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(ThumbnailError::Encode)?;
    Ok(Thumbnail {
        png,
        width: scaled.width(),
        height: scaled.height(),
    })
}

/// Decodes under [`MAX_DIMENSION`] and [`MAX_ALLOC_BYTES`]. The reader checks the
/// dimensions from the header before allocating the pixel buffer, which is what stops
/// a decompression bomb.
fn decode(image: &[u8]) -> Result<DynamicImage, ThumbnailError> {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_ALLOC_BYTES);

    let mut reader = ImageReader::new(Cursor::new(image))
        .with_guessed_format()
        .map_err(|err| ThumbnailError::Corrupt(ImageError::IoError(err)))?;
    reader.limits(limits);
    reader.decode().map_err(|err| match err {
        ImageError::Limits(_) => ThumbnailError::TooLarge(err),
        ImageError::Unsupported(_) => ThumbnailError::Unsupported(err),
        _ => ThumbnailError::Corrupt(err),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};
    use proptest::prelude::*;

    fn encoded(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), format)
            .expect("test image encodes");
        bytes
    }

    fn gradient(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        }))
    }

    fn decode_png(png: &[u8]) -> DynamicImage {
        image::load_from_memory_with_format(png, ImageFormat::Png).expect("output is a PNG")
    }

    #[test]
    fn png_is_scaled_down_and_encoded_as_png() {
        let source = encoded(gradient(400, 400), ImageFormat::Png);

        let thumb = make_thumbnail(&source, 100).unwrap();

        assert_eq!((thumb.width, thumb.height), (100, 100));
        let output = decode_png(&thumb.png);
        assert_eq!((output.width(), output.height()), (100, 100));
    }

    #[test]
    fn jpeg_is_recognised_by_its_content() {
        let source = encoded(gradient(300, 200), ImageFormat::Jpeg);

        let thumb = make_thumbnail(&source, 150).unwrap();

        assert_eq!((thumb.width, thumb.height), (150, 100));
        assert_eq!(
            image::guess_format(&thumb.png).unwrap(),
            ImageFormat::Png,
            "a JPEG cover still yields a PNG thumbnail"
        );
    }

    #[test]
    fn every_enabled_format_is_decoded() {
        let formats = [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::WebP,
            ImageFormat::Bmp,
        ];
        for format in formats {
            let source = encoded(gradient(64, 48), format);

            let thumb =
                make_thumbnail(&source, 32).unwrap_or_else(|err| panic!("{format:?}: {err}"));

            assert_eq!((thumb.width, thumb.height), (32, 24), "{format:?}");
        }
    }

    #[test]
    fn wide_image_keeps_its_aspect_ratio() {
        let source = encoded(gradient(1000, 250), ImageFormat::Png);

        let thumb = make_thumbnail(&source, 200).unwrap();

        assert_eq!((thumb.width, thumb.height), (200, 50));
    }

    #[test]
    fn tall_image_keeps_its_aspect_ratio() {
        let source = encoded(gradient(120, 480), ImageFormat::Bmp);

        let thumb = make_thumbnail(&source, 240).unwrap();

        assert_eq!((thumb.width, thumb.height), (60, 240));
    }

    #[test]
    fn small_image_is_not_upscaled() {
        let source = encoded(gradient(40, 30), ImageFormat::Png);

        let thumb = make_thumbnail(&source, 256).unwrap();

        assert_eq!((thumb.width, thumb.height), (40, 30));
    }

    #[test]
    fn transparency_is_kept() {
        let source = DynamicImage::ImageRgba8(RgbaImage::from_pixel(64, 64, Rgba([0, 255, 0, 0])));

        let thumb = make_thumbnail(&encoded(source, ImageFormat::Png), 32).unwrap();

        let output = decode_png(&thumb.png);
        assert!(output.color().has_alpha());
        assert_eq!(output.to_rgba8().get_pixel(0, 0)[3], 0);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut png = encoded(gradient(64, 64), ImageFormat::Png);
        png.truncate(png.len() / 2);
        let random: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let cases: [(&str, &[u8]); 4] = [
            ("zero bytes", &[]),
            ("random bytes", &random),
            ("truncated PNG", &png),
            ("PNG signature only", &png[..8]),
        ];

        for (name, bytes) in cases {
            assert!(make_thumbnail(bytes, 64).is_err(), "{name} must be refused");
        }
    }

    #[test]
    fn unrecognised_bytes_are_unsupported() {
        let err = make_thumbnail(b"GIF? no, just text", 64).unwrap_err();

        assert!(matches!(err, ThumbnailError::Unsupported(_)), "{err}");
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let mut png = encoded(gradient(64, 64), ImageFormat::Png);
        png.truncate(png.len() - 20);

        let err = make_thumbnail(&png, 64).unwrap_err();

        assert!(matches!(err, ThumbnailError::Corrupt(_)), "{err}");
    }

    /// A 60-byte file whose header claims 100000×100000 pixels (40 GB decoded) must be
    /// refused from its header, not by trying to allocate.
    #[test]
    fn decompression_bomb_header_is_refused() {
        let mut png = encoded(gradient(1, 1), ImageFormat::Png);
        // IHDR is the first chunk: 8-byte signature, 4-byte length, "IHDR", then the
        // big-endian width and height, then the chunk's CRC after 5 more bytes.
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());

        let err = make_thumbnail(&png, 64).unwrap_err();

        assert!(matches!(err, ThumbnailError::TooLarge(_)), "{err}");
    }

    /// Within the side limits but over the allocation limit: 8000×3000 RGBA is 96 MB.
    #[test]
    fn image_over_the_allocation_limit_is_refused() {
        let mut png = encoded(
            DynamicImage::ImageRgba8(RgbaImage::new(1, 1)),
            ImageFormat::Png,
        );
        png[16..20].copy_from_slice(&8000u32.to_be_bytes());
        png[20..24].copy_from_slice(&3000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());

        let err = make_thumbnail(&png, 64).unwrap_err();

        assert!(matches!(err, ThumbnailError::TooLarge(_)), "{err}");
    }

    /// The PNG chunk CRC (CRC-32/ISO-HDLC), so a forged header is not rejected as
    /// corrupt before its dimensions are even looked at.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = make_thumbnail(&bytes, 64);
        }

        /// Arbitrary bytes behind a real signature get past format detection and into
        /// each decoder's parser, where a panic would hide.
        #[test]
        fn arbitrary_bytes_behind_a_signature_never_panic(
            signature in prop::sample::select(vec![
                &b"\x89PNG\r\n\x1a\n"[..], b"\xFF\xD8\xFF", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ", b"BM",
            ]),
            tail in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let bytes = [signature, &tail].concat();
            let _ = make_thumbnail(&bytes, 64);
        }
    }
}
