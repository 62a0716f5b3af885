//! Thumbnails of game covers.
//!
//! A cover comes from a user upload or from an arbitrary URL, so its bytes are hostile
//! until proven otherwise: the format is guessed from the content (never from a file
//! name), and its size is read from its header and checked against the
//! [`DecodeBudget`] before any pixel is allocated, so that a small file claiming to be a
//! huge image (a decompression bomb) is refused: at upload, and again in the worker,
//! which decodes under the same [`Limits`]. Decodes run one per core at most
//! ([`render`]), so covers arriving together cannot multiply the budget.

use std::io::Cursor;
use std::sync::LazyLock;

use crate::domain::Thumbnail;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};
use tokio::sync::Semaphore;

/// Widest or tallest image we agree to decode. Covers are a few hundred pixels across;
/// this leaves room for scans while keeping a single row's allocation small.
pub const MAX_DIMENSION: u32 = 8192;

/// Most memory decoding one cover may take (`--max-image-memory`). The decoded pixels
/// count towards it: at the default, 32 MiB, a 4096×2048 RGBA image fits and an
/// 8000×2000 one (over 61 MiB) is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeBudget {
    pub max_bytes: u64,
}

impl Default for DecodeBudget {
    fn default() -> Self {
        Self {
            max_bytes: 32 * 1024 * 1024,
        }
    }
}

impl DecodeBudget {
    /// Refuses, from its header alone, an image this budget would not decode: what the
    /// upload checks before storing a cover. `Ok` for an image within the budget.
    pub fn check(&self, image: &[u8]) -> Result<(), ThumbnailError> {
        let decoder = reader(image)?.into_decoder().map_err(classify)?;
        let (width, height) = decoder.dimensions();
        let bytes = decoder.total_bytes();
        if width > MAX_DIMENSION || height > MAX_DIMENSION || bytes > self.max_bytes {
            return Err(ThumbnailError::TooLarge(format!(
                "{width}×{height} pixels, {} MiB decoded: a cover may be at most \
                 {MAX_DIMENSION}×{MAX_DIMENSION} pixels and {} MiB decoded \
                 (--max-image-memory)",
                bytes.div_ceil(MIB),
                self.max_bytes / MIB
            )));
        }
        Ok(())
    }

    fn limits(&self) -> Limits {
        let mut limits = Limits::default();
        limits.max_image_width = Some(MAX_DIMENSION);
        limits.max_image_height = Some(MAX_DIMENSION);
        limits.max_alloc = Some(self.max_bytes);
        limits
    }
}

const MIB: u64 = 1024 * 1024;

/// Why a cover could not be turned into a thumbnail. None of these get better on a retry:
/// the same bytes fail the same way.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("not an image in a supported format (PNG, JPEG, GIF, WebP, BMP): {0}")]
    Unsupported(ImageError),
    #[error("image is corrupt or truncated: {0}")]
    Corrupt(ImageError),
    #[error("image is too large to decode: {0}")]
    TooLarge(String),
    #[error("could not encode the thumbnail as PNG: {0}")]
    Encode(ImageError),
}

/// Decodes `image` (PNG, JPEG, GIF, WebP or BMP, recognised by its content), scales it
/// down to fit within `max_side`×`max_side` keeping its aspect ratio, and encodes the
/// result as PNG. An image that already fits is re-encoded at its own size, never
/// enlarged. A `max_side` of 0 is treated as 1.
///
/// This is CPU-bound work that can take tens of milliseconds on a large cover: async
/// callers use [`render`], which runs it off the runtime, one per core at most.
pub fn make_thumbnail(
    image: &[u8],
    max_side: u32,
    budget: DecodeBudget,
) -> Result<Thumbnail, ThumbnailError> {
    budget.check(image)?;
    let decoded = decode(image, budget)?;
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

/// [`make_thumbnail`] on a blocking thread, once one of the decodes allowed at once
/// (one per core: more would not finish sooner, and each holds up to a budget) is free.
pub async fn render(
    image: impl AsRef<[u8]> + Send + 'static,
    max_side: u32,
    budget: DecodeBudget,
) -> Result<Result<Thumbnail, ThumbnailError>, tokio::task::JoinError> {
    static DECODES: LazyLock<Semaphore> = LazyLock::new(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(1, usize::from))
    });
    let _decoding = DECODES
        .acquire()
        .await
        .expect("the semaphore is never closed");
    tokio::task::spawn_blocking(move || make_thumbnail(image.as_ref(), max_side, budget)).await
}

/// Decodes under the budget's [`Limits`], which also hold for what the header did not
/// say (a GIF's frames).
fn decode(image: &[u8], budget: DecodeBudget) -> Result<DynamicImage, ThumbnailError> {
    let mut reader = reader(image)?;
    reader.limits(budget.limits());
    reader.decode().map_err(classify)
}

fn reader(image: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, ThumbnailError> {
    ImageReader::new(Cursor::new(image))
        .with_guessed_format()
        .map_err(|err| ThumbnailError::Corrupt(ImageError::IoError(err)))
}

fn classify(err: ImageError) -> ThumbnailError {
    match err {
        ImageError::Limits(_) => ThumbnailError::TooLarge(err.to_string()),
        ImageError::Unsupported(_) => ThumbnailError::Unsupported(err),
        _ => ThumbnailError::Corrupt(err),
    }
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

        let thumb = make_thumbnail(&source, 100, DecodeBudget::default()).unwrap();

        assert_eq!((thumb.width, thumb.height), (100, 100));
        let output = decode_png(&thumb.png);
        assert_eq!((output.width(), output.height()), (100, 100));
    }

    #[test]
    fn jpeg_is_recognised_by_its_content() {
        let source = encoded(gradient(300, 200), ImageFormat::Jpeg);

        let thumb = make_thumbnail(&source, 150, DecodeBudget::default()).unwrap();

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

            let thumb = make_thumbnail(&source, 32, DecodeBudget::default())
                .unwrap_or_else(|err| panic!("{format:?}: {err}"));

            assert_eq!((thumb.width, thumb.height), (32, 24), "{format:?}");
        }
    }

    #[test]
    fn wide_image_keeps_its_aspect_ratio() {
        let source = encoded(gradient(1000, 250), ImageFormat::Png);

        let thumb = make_thumbnail(&source, 200, DecodeBudget::default()).unwrap();

        assert_eq!((thumb.width, thumb.height), (200, 50));
    }

    #[test]
    fn tall_image_keeps_its_aspect_ratio() {
        let source = encoded(gradient(120, 480), ImageFormat::Bmp);

        let thumb = make_thumbnail(&source, 240, DecodeBudget::default()).unwrap();

        assert_eq!((thumb.width, thumb.height), (60, 240));
    }

    #[test]
    fn small_image_is_not_upscaled() {
        let source = encoded(gradient(40, 30), ImageFormat::Png);

        let thumb = make_thumbnail(&source, 256, DecodeBudget::default()).unwrap();

        assert_eq!((thumb.width, thumb.height), (40, 30));
    }

    #[test]
    fn transparency_is_kept() {
        let source = DynamicImage::ImageRgba8(RgbaImage::from_pixel(64, 64, Rgba([0, 255, 0, 0])));

        let thumb = make_thumbnail(
            &encoded(source, ImageFormat::Png),
            32,
            DecodeBudget::default(),
        )
        .unwrap();

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
            assert!(
                make_thumbnail(bytes, 64, DecodeBudget::default()).is_err(),
                "{name} must be refused"
            );
        }
    }

    #[test]
    fn unrecognised_bytes_are_unsupported() {
        let err = make_thumbnail(b"GIF? no, just text", 64, DecodeBudget::default()).unwrap_err();

        assert!(matches!(err, ThumbnailError::Unsupported(_)), "{err}");
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let mut png = encoded(gradient(64, 64), ImageFormat::Png);
        png.truncate(png.len() - 20);

        let err = make_thumbnail(&png, 64, DecodeBudget::default()).unwrap_err();

        assert!(matches!(err, ThumbnailError::Corrupt(_)), "{err}");
    }

    /// A 60-byte file whose header claims 100000×100000 pixels (40 GB decoded) must be
    /// refused from its header, not by trying to allocate.
    #[test]
    fn decompression_bomb_header_is_refused() {
        let png = rgba_png_claiming(100_000, 100_000);

        let err = make_thumbnail(&png, 64, DecodeBudget::default()).unwrap_err();

        assert!(matches!(err, ThumbnailError::TooLarge(_)), "{err}");
    }

    /// Within the side limits but over the budget: 8000×3000 RGBA is 96 MB.
    #[test]
    fn image_over_the_allocation_limit_is_refused() {
        let png = rgba_png_claiming(8000, 3000);

        let err = make_thumbnail(&png, 64, DecodeBudget::default()).unwrap_err();

        assert!(matches!(err, ThumbnailError::TooLarge(_)), "{err}");
    }

    /// The upload's check reads the size from the header, says it, and follows the
    /// budget: an 8000×2000 RGBA image (61 MiB decoded) is refused by the default 32 MiB
    /// and taken by 64 MiB.
    #[test]
    fn the_budget_is_checked_from_the_header() {
        let png = rgba_png_claiming(8000, 2000);

        let err = DecodeBudget::default().check(&png).unwrap_err();
        assert!(
            err.to_string().contains("8000×2000 pixels, 62 MiB decoded"),
            "{err}"
        );
        let roomy = DecodeBudget {
            max_bytes: 64 * 1024 * 1024,
        };
        assert!(roomy.check(&png).is_ok());
    }

    /// A 1×1 RGBA PNG whose header claims `width`×`height`, its CRC fixed so that the
    /// claim is read.
    fn rgba_png_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut png = encoded(
            DynamicImage::ImageRgba8(RgbaImage::new(1, 1)),
            ImageFormat::Png,
        );
        // IHDR is the first chunk: 8-byte signature, 4-byte length, "IHDR", then the
        // big-endian width and height, then the chunk's CRC after 5 more bytes.
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
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
            let _ = make_thumbnail(&bytes, 64, DecodeBudget::default());
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
            let _ = make_thumbnail(&bytes, 64, DecodeBudget::default());
        }
    }
}
