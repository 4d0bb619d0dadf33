//! `fedgectl history --plot FILE.png|FILE.svg`: test accuracy and mean training loss against round, one line per
//! metric (accuracy on the left axis, loss on the right).
//!
//! Drawing needs a TrueType font for the labels: `FEDGE_PLOT_FONT`, or a DejaVu/Liberation/Arial font in the usual
//! system places. The plot is drawn in memory and written whole (`ctl::atomic`): when drawing fails (no completed
//! round to plot, no font) no file is created and an existing one is left as it was. This module writes only the
//! file it is given and never touches the network.

use anyhow::bail;
use fedge_shared::admin::RoundSummary;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The colour of the test-accuracy line.
pub const ACCURACY_COLOR: RGBColor = RGBColor(31, 119, 180);
/// The colour of the train-loss line.
pub const LOSS_COLOR: RGBColor = RGBColor(255, 127, 14);

const FONT_PLACES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

fn find_font() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FEDGE_PLOT_FONT") {
        return Some(PathBuf::from(p));
    }
    FONT_PLACES.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Registers a font once per process.
fn register_font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = find_font()
            .ok_or("no TrueType font found for the plot's labels; set FEDGE_PLOT_FONT to a .ttf file".to_string())?;
        let bytes = std::fs::read(&path).map_err(|e| format!("reading the font {}: {e}", path.display()))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
    })
    .clone()
    .map_err(|e| anyhow::anyhow!(e))
}

/// The points of one metric: (round, value) for the completed rounds that have it.
pub fn series(rounds: &[RoundSummary], metric: impl Fn(&RoundSummary) -> Option<f32>) -> Vec<(u64, f32)> {
    rounds
        .iter()
        .filter(|r| r.completed)
        .filter_map(|r| metric(r).filter(|v| v.is_finite()).map(|v| (r.round, v)))
        .collect()
}

/// Writes the plot; the format follows the extension (`.png` or `.svg`). Nothing is written on error.
pub fn plot_history(rounds: &[RoundSummary], path: &Path) -> anyhow::Result<()> {
    let bytes = render_file(rounds, path)?;
    super::atomic::write_file(path, &bytes)
}

/// The bytes of the plot file `path` names (PNG or SVG, by extension), drawn in memory.
pub fn render_file(rounds: &[RoundSummary], path: &Path) -> anyhow::Result<Vec<u8>> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let size = (1000, 600);
    match ext.as_deref() {
        Some("png") => encode_png(&render_rgb(rounds, size)?, size),
        Some("svg") => {
            register_font()?;
            let mut text = String::new();
            {
                let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
                draw(rounds, &root)?;
                root.present().map_err(|e| anyhow::anyhow!("drawing: {e:?}"))?;
            }
            Ok(text.into_bytes())
        }
        _ => bail!("{}: the plot must be a .png or .svg file", path.display()),
    }
}

/// An 8-bit RGB buffer of `size` as a PNG file.
fn encode_png(rgb: &[u8], size: (u32, u32)) -> anyhow::Result<Vec<u8>> {
    let mut out = vec![];
    {
        let mut encoder = png::Encoder::new(&mut out, size.0, size.1);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| anyhow::anyhow!("encoding the PNG: {e}"))?;
        writer.write_image_data(rgb).map_err(|e| anyhow::anyhow!("encoding the PNG: {e}"))?;
        writer.finish().map_err(|e| anyhow::anyhow!("encoding the PNG: {e}"))?;
    }
    Ok(out)
}

/// Draws the plot into an RGB buffer of `size` (what the PNG holds, before encoding).
pub fn render_rgb(rounds: &[RoundSummary], size: (u32, u32)) -> anyhow::Result<Vec<u8>> {
    register_font()?;
    let mut buf = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        draw(rounds, &root)?;
        root.present().map_err(|e| anyhow::anyhow!("drawing: {e:?}"))?;
    }
    Ok(buf)
}

fn draw<DB: DrawingBackend>(rounds: &[RoundSummary], root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing the plot: {e:?}");
    let acc = series(rounds, |r| r.test_accuracy);
    let loss = series(rounds, |r| r.mean_train_loss);
    if acc.is_empty() && loss.is_empty() {
        bail!("no completed round has a test accuracy or a training loss to plot");
    }
    let first = acc.iter().chain(&loss).map(|p| p.0).min().unwrap_or(0);
    let last = acc.iter().chain(&loss).map(|p| p.0).max().unwrap_or(1).max(first + 1);
    let max_loss = loss.iter().map(|p| p.1).fold(0.0f32, f32::max).max(1e-3) * 1.1;
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(root)
        .caption("fedge: global model by round", ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(first..last, 0f32..1f32)
        .map_err(e)?
        .set_secondary_coord(first..last, 0f32..max_loss);
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("test accuracy")
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(e)?;
    chart.configure_secondary_axes().y_desc("mean train loss").axis_desc_style(("sans-serif", 18)).draw().map_err(e)?;
    chart
        .draw_series(LineSeries::new(acc.iter().copied(), ACCURACY_COLOR.stroke_width(3)))
        .map_err(e)?
        .label("test accuracy")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ACCURACY_COLOR.stroke_width(3)));
    chart.draw_series(acc.iter().map(|&p| Circle::new(p, 4, ACCURACY_COLOR.filled()))).map_err(e)?;
    chart
        .draw_secondary_series(LineSeries::new(loss.iter().copied(), LOSS_COLOR.stroke_width(3)))
        .map_err(e)?
        .label("mean train loss (right axis)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], LOSS_COLOR.stroke_width(3)));
    chart.draw_secondary_series(loss.iter().map(|&p| Circle::new(p, 4, LOSS_COLOR.filled()))).map_err(e)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(round: u64, acc: f32, loss: f32) -> RoundSummary {
        RoundSummary {
            round,
            completed: true,
            abort_reason: None,
            strategy: "fedavg".into(),
            selected: 2,
            participants: 2,
            dropouts: 0,
            mean_train_loss: Some(loss),
            test_accuracy: Some(acc),
            test_loss: None,
            duration_ms: 1000,
            bytes: 10,
            examples: 10,
            new_version: Some(round),
            started_ms: 0,
            evaluated_version: round.saturating_sub(1),
            federated_accuracy: None,
            federated_loss: None,
            federated_examples: 0,
            epsilon: None,
            delta: None,
        }
    }

    /// Rows (from the top) where `color` appears in the pixel column `x`.
    fn rows_of(buf: &[u8], (w, h): (u32, u32), x: u32, color: RGBColor) -> Vec<u32> {
        (0..h)
            .filter(|&y| {
                let i = ((y * w + x) * 3) as usize;
                buf[i..i + 3] == [color.0, color.1, color.2]
            })
            .collect()
    }

    #[test]
    fn the_plot_draws_one_line_per_metric_rising_accuracy_and_falling_loss() {
        let rounds: Vec<RoundSummary> = (1..=10).map(|r| round(r, 0.5 + 0.04 * r as f32, 2.0 / r as f32)).collect();
        let size = (1000, 600);
        let buf = render_rgb(&rounds, size).unwrap();
        // Columns near the first and the last round, inside the plotting area.
        let (left, right) = (120, 880);
        let acc_l = rows_of(&buf, size, left, ACCURACY_COLOR);
        let acc_r = rows_of(&buf, size, right, ACCURACY_COLOR);
        let loss_l = rows_of(&buf, size, left, LOSS_COLOR);
        let loss_r = rows_of(&buf, size, right, LOSS_COLOR);
        assert!(!acc_l.is_empty() && !acc_r.is_empty() && !loss_l.is_empty() && !loss_r.is_empty());
        // Accuracy rises (drawn higher, a smaller row), loss falls.
        assert!(acc_r[0] < acc_l[0], "{acc_l:?} {acc_r:?}");
        assert!(loss_r[0] > loss_l[0], "{loss_l:?} {loss_r:?}");
        if let Ok(path) = std::env::var("FEDGE_KEEP_PLOT") {
            plot_history(&rounds, Path::new(&path)).unwrap();
        }
    }

    #[test]
    fn aborted_rounds_and_missing_metrics_are_left_out() {
        let mut r = vec![round(1, 0.5, 1.0), round(2, 0.9, 0.5)];
        r[1].completed = false;
        r.push(RoundSummary { test_accuracy: None, ..round(3, 0.0, 0.2) });
        assert_eq!(series(&r, |x| x.test_accuracy), vec![(1, 0.5)]);
        assert_eq!(series(&r, |x| x.mean_train_loss), vec![(1, 1.0), (3, 0.2)]);
    }

    #[test]
    fn a_plot_that_cannot_be_drawn_writes_no_file_and_leaves_an_existing_one_alone() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("out.png");
        let e = plot_history(&[], &png).unwrap_err().to_string();
        assert!(e.contains("no completed round"), "{e}");
        let svg = dir.path().join("out.svg");
        assert!(plot_history(&[], &svg).is_err());
        let jpg = dir.path().join("out.jpg");
        assert!(plot_history(&[round(1, 0.5, 1.0)], &jpg).unwrap_err().to_string().contains(".png or .svg"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written on error");
        std::fs::write(&png, b"an earlier plot").unwrap();
        let aborted = RoundSummary { completed: false, ..round(1, 0.5, 1.0) };
        assert!(plot_history(&[aborted], &png).is_err());
        assert_eq!(std::fs::read(&png).unwrap(), b"an earlier plot");
    }

    #[test]
    fn the_png_file_decodes_to_the_drawn_pixels_and_the_svg_file_has_both_lines() {
        let rounds: Vec<RoundSummary> = (1..=4).map(|r| round(r, 0.5 + 0.1 * r as f32, 1.0 / r as f32)).collect();
        let dir = tempfile::tempdir().unwrap();
        let png_path = dir.path().join("h.png");
        plot_history(&rounds, &png_path).unwrap();
        let decoder = png::Decoder::new(std::fs::File::open(&png_path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((info.width, info.height, info.color_type), (1000, 600, png::ColorType::Rgb));
        assert_eq!(&pixels[..info.buffer_size()], render_rgb(&rounds, (1000, 600)).unwrap().as_slice());
        let svg_path = dir.path().join("h.svg");
        plot_history(&rounds, &svg_path).unwrap();
        let svg = std::fs::read_to_string(&svg_path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("#1F77B4") && svg.contains("#FF7F0E"), "{}", &svg[..200]);
    }
}
