//! SVG drawing shared by the report's figures: escaping, compact numbers, axes, legends and line
//! charts, each written straight into a `String`.

use std::borrow::Cow;
use std::fmt::{self, Write};

/// Series colours (matplotlib's tab10), reused in turn when a chart has more series.
pub(super) const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// Text escaped for XML and HTML alike. Characters XML 1.0 forbids (control characters but
/// tab and newlines) become U+FFFD, so a label with a stray byte cannot break the document.
pub(super) struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let special = |c: char| {
            matches!(c, '&' | '<' | '>' | '"' | '\'' | '\u{FFFE}' | '\u{FFFF}')
                || (c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
        };
        let mut rest = self.0;
        while let Some(i) = rest.find(special) {
            f.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or('\u{FFFD}');
            f.write_str(match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                _ => "\u{FFFD}",
            })?;
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// A coordinate rounded to 2 decimals, trailing zeros dropped: compact for 200 000 bars.
pub(super) struct N(pub f64);

impl fmt::Display for N {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `as` saturates, and NaN becomes 0: nothing non-finite reaches the document.
        let hundredths = (self.0 * 100.0).round() as i64;
        let sign = if hundredths < 0 { "-" } else { "" };
        let (whole, frac) = (
            hundredths.unsigned_abs() / 100,
            hundredths.unsigned_abs() % 100,
        );
        match frac {
            0 => write!(f, "{sign}{whole}"),
            _ if frac % 10 == 0 => write!(f, "{sign}{whole}.{}", frac / 10),
            _ => write!(f, "{sign}{whole}.{frac:02}"),
        }
    }
}

/// At most `max_chars` characters of `s`, with an ellipsis where it was cut.
pub(super) fn truncate(s: &str, max_chars: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max_chars.saturating_sub(1)) {
        Some((cut, _)) if s[cut..].chars().nth(1).is_some() => format!("{}…", &s[..cut]).into(),
        _ => s.into(),
    }
}

/// Starts an SVG document of this size, with `title` as its accessible name.
pub(super) fn open(out: &mut String, width: f64, height: f64, title: &str) -> fmt::Result {
    let (w, h) = (N(width), N(height));
    writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11" role="img"><title>{}</title>"#,
        Esc(title)
    )
}

pub(super) fn close(out: &mut String) {
    out.push_str("</svg>\n");
}

/// A plot area in the document and the data ranges it shows, both axes starting at zero.
pub(super) struct Plot {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
    pub x_max: f64,
    pub y_max: f64,
}

impl Plot {
    /// The document x of data value `v`, kept inside the plot.
    pub fn x(&self, v: f64) -> f64 {
        self.left + ratio(v, self.x_max) * self.width
    }

    pub fn y(&self, v: f64) -> f64 {
        self.bottom() - ratio(v, self.y_max) * self.height
    }

    pub fn bottom(&self) -> f64 {
        self.top + self.height
    }

    pub fn right(&self) -> f64 {
        self.left + self.width
    }
}

fn ratio(v: f64, max: f64) -> f64 {
    if max > 0.0 {
        (v / max).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Tick values 0, step, 2·step, ... up to `max`, the step 1, 2 or 5 times a power of ten giving
/// about `target` ticks, and the decimals a label needs at that step.
pub(super) fn ticks(max: f64, target: usize) -> (Vec<f64>, usize) {
    if !(max > 0.0 && max.is_finite()) {
        return (vec![0.0], 0);
    }
    let raw = max / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let count = (max / step + 1e-9).floor() as usize;
    ((0..=count).map(|i| i as f64 * step).collect(), decimals)
}

/// Vertical grid lines and labelled ticks under the plot, and the axis name below them.
pub(super) fn x_axis(out: &mut String, plot: &Plot, name: &str) -> fmt::Result {
    let (values, decimals) = ticks(plot.x_max, 10);
    let (top, bottom) = (N(plot.top), N(plot.bottom()));
    out.push_str(r##"<g stroke="#e4e4e4">"##);
    for v in &values {
        let x = N(plot.x(*v));
        write!(out, r#"<line x1="{x}" x2="{x}" y1="{top}" y2="{bottom}"/>"#)?;
    }
    out.push_str("</g>\n<g text-anchor=\"middle\" fill=\"#444\">");
    for v in &values {
        let (x, y) = (N(plot.x(*v)), N(plot.bottom() + 14.0));
        write!(out, r#"<text x="{x}" y="{y}">{v:.decimals$}</text>"#)?;
    }
    writeln!(
        out,
        r#"<text x="{}" y="{}">{}</text></g>"#,
        N(plot.left + plot.width / 2.0),
        N(plot.bottom() + 30.0),
        Esc(name)
    )?;
    axis_lines(out, plot)
}

/// Horizontal grid lines and labelled ticks left of the plot, the axis name turned upright.
pub(super) fn y_axis(out: &mut String, plot: &Plot, name: &str) -> fmt::Result {
    let (values, decimals) = ticks(plot.y_max, 5);
    let (left, right) = (N(plot.left), N(plot.right()));
    out.push_str(r##"<g stroke="#e4e4e4">"##);
    for v in &values {
        let y = N(plot.y(*v));
        write!(out, r#"<line x1="{left}" x2="{right}" y1="{y}" y2="{y}"/>"#)?;
    }
    out.push_str("</g>\n<g text-anchor=\"end\" fill=\"#444\">");
    for v in &values {
        let (x, y) = (N(plot.left - 4.0), N(plot.y(*v) + 4.0));
        write!(out, r#"<text x="{x}" y="{y}">{v:.decimals$}</text>"#)?;
    }
    let (x, y) = (N(plot.left - 44.0), N(plot.top + plot.height / 2.0));
    writeln!(
        out,
        r#"<text x="{x}" y="{y}" text-anchor="middle" transform="rotate(-90 {x} {y})">{}</text></g>"#,
        Esc(name)
    )
}

fn axis_lines(out: &mut String, plot: &Plot) -> fmt::Result {
    let (l, r, t, b) = (N(plot.left), N(plot.right()), N(plot.top), N(plot.bottom()));
    writeln!(
        out,
        r##"<polyline fill="none" stroke="#888" points="{l},{t} {l},{b} {r},{b}"/>"##
    )
}

/// How a legend entry is marked: a filled square (bars), or a line like the series'.
#[derive(Clone, Copy)]
pub(super) enum Mark {
    Swatch,
    Line,
    Dashed,
}

pub(super) struct LegendItem {
    pub colour: &'static str,
    pub name: String,
    pub mark: Mark,
}

/// Legend entries laid out left to right in equal columns, wrapping at a width.
pub(super) struct Legend<'a> {
    items: &'a [LegendItem],
    item_width: f64,
    per_row: usize,
}

const LEGEND_ROW: f64 = 16.0;
const LEGEND_CHARS: usize = 40;

impl<'a> Legend<'a> {
    pub fn new(items: &'a [LegendItem], width: f64) -> Legend<'a> {
        let longest = items
            .iter()
            .map(|i| i.name.chars().count())
            .max()
            .unwrap_or(0);
        let item_width = (longest.min(LEGEND_CHARS) as f64 * 6.2 + 34.0).clamp(90.0, 300.0);
        let per_row = ((width / item_width) as usize).max(1);
        Legend {
            items,
            item_width,
            per_row,
        }
    }

    pub fn height(&self) -> f64 {
        self.items.len().div_ceil(self.per_row) as f64 * LEGEND_ROW
    }

    /// Draws the entries with the first row's baseline at `y`.
    pub fn draw(&self, out: &mut String, x: f64, y: f64) -> fmt::Result {
        for (i, item) in self.items.iter().enumerate() {
            let ix = x + (i % self.per_row) as f64 * self.item_width;
            let iy = y + (i / self.per_row) as f64 * LEGEND_ROW;
            let (mx, my, c) = (N(ix), N(iy - 4.0), item.colour);
            match item.mark {
                Mark::Swatch => write!(
                    out,
                    r#"<rect x="{mx}" y="{}" width="10" height="10" fill="{c}"/>"#,
                    N(iy - 9.0)
                )?,
                Mark::Line | Mark::Dashed => write!(
                    out,
                    r#"<line x1="{mx}" x2="{}" y1="{my}" y2="{my}" stroke="{c}" stroke-width="2"{}/>"#,
                    N(ix + 16.0),
                    dash(matches!(item.mark, Mark::Dashed))
                )?,
            }
            let name = truncate(&item.name, LEGEND_CHARS);
            writeln!(
                out,
                r#"<text x="{}" y="{}">{}</text>"#,
                N(ix + 22.0),
                N(iy),
                Esc(&name)
            )?;
        }
        Ok(())
    }
}

fn dash(dashed: bool) -> &'static str {
    if dashed {
        r#" stroke-dasharray="5 3""#
    } else {
        ""
    }
}

/// One line of a line chart: (x, y) points in data units, in increasing x.
pub(super) struct Series {
    pub name: String,
    pub colour: &'static str,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

/// A line chart over the run: x is seconds since the run started.
pub(super) struct LineChart<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub x_max: f64,
    pub y_max: f64,
    pub series: &'a [Series],
}

pub(super) const CHART_WIDTH: f64 = 900.0;

pub(super) fn line_chart(out: &mut String, chart: &LineChart<'_>) -> fmt::Result {
    let plot = Plot {
        left: 64.0,
        top: 12.0,
        width: CHART_WIDTH - 64.0 - 16.0,
        height: 200.0,
        x_max: chart.x_max,
        y_max: chart.y_max,
    };
    let items: Vec<LegendItem> = chart.series.iter().map(legend_item).collect();
    let legend = Legend::new(&items, plot.width);
    open(
        out,
        CHART_WIDTH,
        plot.bottom() + 52.0 + legend.height(),
        chart.title,
    )?;
    y_axis(out, &plot, chart.y_label)?;
    x_axis(out, &plot, "time since run start (s)")?;
    for series in chart.series {
        polyline(out, &plot, series)?;
    }
    legend.draw(out, plot.left, plot.bottom() + 54.0)?;
    close(out);
    Ok(())
}

fn legend_item(series: &Series) -> LegendItem {
    LegendItem {
        colour: series.colour,
        name: series.name.clone(),
        mark: if series.dashed {
            Mark::Dashed
        } else {
            Mark::Line
        },
    }
}

fn polyline(out: &mut String, plot: &Plot, series: &Series) -> fmt::Result {
    let points = decimate(&series.points, plot);
    write!(
        out,
        r#"<polyline fill="none" stroke="{}" stroke-width="1.5"{} points=""#,
        series.colour,
        dash(series.dashed)
    )?;
    for (i, (x, y)) in points.iter().enumerate() {
        let gap = if i == 0 { "" } else { " " };
        write!(out, "{gap}{},{}", N(plot.x(*x)), N(plot.y(*y)))?;
    }
    out.push_str("\"/>\n");
    if let [(x, y)] = points[..] {
        let (cx, cy) = (N(plot.x(x)), N(plot.y(y)));
        writeln!(
            out,
            r#"<circle cx="{cx}" cy="{cy}" r="2" fill="{}"/>"#,
            series.colour
        )?;
    }
    Ok(())
}

/// One point per pixel column, the column's highest, where there are more points than columns:
/// a day of one-second samples would otherwise draw the same ink a hundred times over.
fn decimate(points: &[(f64, f64)], plot: &Plot) -> Vec<(f64, f64)> {
    if points.len() <= 2 * plot.width as usize {
        return points.to_vec();
    }
    let mut kept: Vec<(f64, f64)> = Vec::new();
    let mut column = None;
    for &(x, y) in points {
        let c = plot.x(x).floor() as i64;
        match kept.last_mut() {
            Some(last) if column == Some(c) => {
                if y > last.1 {
                    *last = (x, y);
                }
            }
            _ => {
                column = Some(c);
                kept.push((x, y));
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_forbidden_characters() {
        let text = Esc("<script>a & 'b' \"c\"\u{1}</script>").to_string();
        assert_eq!(
            text,
            "&lt;script&gt;a &amp; &#39;b&#39; &quot;c&quot;\u{FFFD}&lt;/script&gt;"
        );
        assert_eq!(Esc("µs ✓").to_string(), "µs ✓");
    }

    #[test]
    fn numbers_are_short() {
        let shown: Vec<String> = [0.0, 12.5, 1.23456, -0.004, -2.1, f64::NAN, 7.0]
            .iter()
            .map(|v| N(*v).to_string())
            .collect();
        assert_eq!(shown, ["0", "12.5", "1.23", "0", "-2.1", "0", "7"]);
    }

    #[test]
    fn ticks_step_by_one_two_or_five() {
        assert_eq!(ticks(10.0, 5), (vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0], 0));
        assert_eq!(ticks(0.35, 3).0, [0.0, 0.2]);
        assert_eq!(ticks(0.35, 3).1, 1);
        assert_eq!(ticks(0.0, 5), (vec![0.0], 0));
    }

    #[test]
    fn truncates_on_characters() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abcd", 4), "abcd");
        assert_eq!(truncate("µµµµµ", 3), "µµ…");
    }
}
