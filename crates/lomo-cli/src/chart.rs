//! What the SVG charts share (`lomo train`'s loss.svg, xtask's bench and profile reports): a
//! document drawn into a string on white, the chart's frame, its legend, the bars of a bar
//! chart, the series colours; all with plotters' SVG backend, whose text needs no font files.

use anyhow::Result;
use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::{RangedCoordf64, RangedCoordu32};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The drawing area a chart is drawn on.
pub type Root<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// A bar chart: one segment per bar group on x, a value on y.
pub type BarChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<SegmentedCoord<RangedCoordu32>, RangedCoordf64>>;

/// A bar of a [`BarChart`].
pub type Bar = Rectangle<(SegmentValue<u32>, f64)>;

/// The series colours, in the order the charts use them (Tableau 10).
pub const BLUE: RGBColor = RGBColor(0x4e, 0x79, 0xa7);
/// The second series.
pub const ORANGE: RGBColor = RGBColor(0xf2, 0x8e, 0x2b);
/// The third series.
pub const GREEN: RGBColor = RGBColor(0x59, 0xa1, 0x4f);
/// The fourth series.
pub const RED: RGBColor = RGBColor(0xe1, 0x57, 0x59);
/// The fifth series.
pub const TEAL: RGBColor = RGBColor(0x76, 0xb7, 0xb2);

/// A plotters error, as the charts report it.
pub fn error<E: std::error::Error + Send + Sync + 'static>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e}")
}

/// An SVG document of `size` pixels: a white page that `draw` draws on.
pub fn svg(size: (u32, u32), draw: impl FnOnce(&Root) -> Result<()>) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(error)?;
        draw(&root)?;
        root.present().map_err(error)?;
    }
    Ok(svg)
}

/// The frame of a chart on `root`: `caption` in sans-serif of `font_size` and the charts' margin
/// and label areas (36 px below, 60 px left), which a chart may widen before it builds.
pub fn frame<'a, 'b>(root: &'a Root<'b>, caption: &str, font_size: u32) -> ChartBuilder<'a, 'static, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder.caption(caption, ("sans-serif", font_size)).margin(12).x_label_area_size(36).y_label_area_size(60);
    builder
}

/// A bar chart of `groups` segments (labelled by `label`, no vertical grid lines) from 0 to
/// `top` on y (described by `y_desc`), in a [`frame`].
pub fn bar_chart<'a, 'b>(
    root: &'a Root<'b>,
    caption: &str,
    font_size: u32,
    groups: u32,
    top: f64,
    y_desc: &str,
    label: impl Fn(usize) -> String,
) -> Result<BarChart<'a, 'b>> {
    let mut chart = frame(root, caption, font_size)
        .build_cartesian_2d((0..groups.saturating_sub(1).max(1)).into_segmented(), 0.0..top)
        .map_err(error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_desc)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => label(*i as usize),
            _ => String::new(),
        })
        .draw()
        .map_err(error)?;
    Ok(chart)
}

/// A bar of group `group` from `bottom` to `top`, inset by `left` and `right` pixels from the
/// group's edges.
pub fn bar(group: u32, bottom: f64, top: f64, style: impl Into<ShapeStyle>, left: u32, right: u32) -> Bar {
    let mut bar = Rectangle::new([(SegmentValue::Exact(group), bottom), (SegmentValue::Exact(group + 1), top)], style);
    bar.set_margin(0, 0, left, right);
    bar
}

/// `text` centred over group `group`, its bottom at `y`.
pub fn note(text: String, group: u32, y: f64, font_size: u32) -> Text<'static, (SegmentValue<u32>, f64), String> {
    Text::new(
        text,
        (SegmentValue::CenterOf(group), y),
        TextStyle::from(("sans-serif", font_size).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom)),
    )
}

/// A legend mark: a filled box of `colour`, 12 px wide and `2 × half_height` high, so that each
/// series stays one line in the file.
pub fn mark(colour: RGBColor, half_height: i32) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - half_height), (x + 12, y + half_height)], colour.filled())
}

/// The legend, at `position`, on a mostly opaque white box with a black border.
pub fn legend<'a, 'b: 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(error)
}
