//! Writes a synthetic image folder for the memory benchmark (`scripts/bench-image-folder.sh`):
//! `cargo run -p fedge-shared --example make_image_folder -- DIR COUNT` writes COUNT 28x28 grayscale PNGs under
//! `DIR/train/<class>/` in ten classes (class `c` is a bright horizontal band at rows `2c..2c+8`, over seeded noise)
//! and a tenth as many under `DIR/test/<class>/`. A benchmark tool, not part of the product.

use std::path::Path;

const CLASSES: usize = 10;
const SIDE: u32 = 28;

fn write_part(dir: &Path, count: usize, salt: u32) -> Result<(), Box<dyn std::error::Error>> {
    for c in 0..CLASSES {
        std::fs::create_dir_all(dir.join(format!("class{c}")))?;
    }
    for i in 0..count {
        let c = i % CLASSES;
        let seed = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt);
        let img = image::GrayImage::from_fn(SIDE, SIDE, |x, y| {
            let noise = (seed ^ x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663)).wrapping_mul(83_492_791) >> 26;
            let band = (2 * c as u32..2 * c as u32 + 8).contains(&y);
            image::Luma([if band { 180 + noise as u8 } else { noise as u8 }])
        });
        img.save(dir.join(format!("class{c}")).join(format!("{i:07}.png")))?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(count)) = (args.next(), args.next()) else {
        return Err("usage: make_image_folder DIR COUNT".into());
    };
    let count: usize = count.parse()?;
    let dir = Path::new(&dir);
    write_part(&dir.join("train"), count, 1)?;
    write_part(&dir.join("test"), (count / 10).max(CLASSES), 2)?;
    println!("wrote {count} training images and {} test images under {}", (count / 10).max(CLASSES), dir.display());
    Ok(())
}
