"""Server-side SVG charts: valid SVG, escaped labels, no style or script, a message when there is no data."""

import xml.etree.ElementTree as ET
from datetime import date

from annotations import charts

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert(\"x\")</script> & 'quotes'"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(str(svg))


def elements(root: ET.Element, tag: str, css_class: str | None = None) -> list[ET.Element]:
    return [e for e in root.iter(SVG + tag) if css_class is None or e.get("class") == css_class]


def texts(root: ET.Element) -> list[str]:
    return [e.text for e in root.iter(SVG + "text")]


def bars(groups, **kwargs):
    return charts.bar_chart(groups, chart_id="c", title="Edit distance", description="Lower is better.", **kwargs)


def test_grouped_bars_draw_one_bar_per_measured_version_with_its_value():
    groups = [("Support", [("base", 0.5), ("tuned", 0.25)]), ("News", [("base", 1.0)])]

    root = parse(bars(groups))

    drawn = elements(root, "rect", "bar")
    assert len(drawn) == 3
    heights = [float(bar.get("height")) for bar in drawn]
    assert heights[0] == 2 * heights[1] and heights[2] == 2 * heights[0]  # heights follow the values
    assert [e.text for e in elements(root, "text", "value")] == ["0.50", "0.25", "1.00"]
    assert [e.text for e in elements(root, "text", "group")] == ["Support", "News"]


def test_a_version_keeps_its_colour_in_every_group_and_the_legend_names_each_once():
    groups = [("Support", [("base", 0.5), ("tuned", 0.25)]), ("News", [("base", 0.75)])]

    root = parse(bars(groups, value_format=charts.percent))

    fills = [bar.get("fill") for bar in elements(root, "rect", "bar")]
    assert fills[0] == fills[2] != fills[1]
    legend = [entry.find(SVG + "text").text for entry in elements(root, "g", "legend-entry")]
    assert legend == ["base", "tuned"]
    assert "75%" in texts(root)


def test_the_legend_order_can_be_fixed_by_the_caller():
    root = parse(bars([("Support", [("tuned", 0.2), ("base", 0.4)])], legend=["base", "tuned"]))

    legend = [entry.find(SVG + "text").text for entry in elements(root, "g", "legend-entry")]
    assert legend == ["base", "tuned"]


def test_an_unmeasured_value_leaves_its_slot_marked_not_applicable():
    root = parse(bars([("Support", [("base", None), ("tuned", 0.1)])]))

    assert len(elements(root, "rect", "bar")) == 1
    assert "n/a" in texts(root)


def test_hostile_labels_come_out_escaped_and_read_back_as_the_same_text():
    svg = str(
        charts.bar_chart([(HOSTILE, [(HOSTILE, 0.4)])], chart_id='x"><script>', title=HOSTILE, description=HOSTILE)
    )

    assert "<script" not in svg
    assert "&lt;script&gt;" in svg
    root = parse(svg)
    assert not list(root.iter("script")) and not list(root.iter(SVG + "script"))
    assert root.find(SVG + "title").text == HOSTILE
    assert root.get("aria-label") == HOSTILE
    assert elements(root, "rect", "bar")[0].find(SVG + "title").text == f"{HOSTILE}, {HOSTILE}: 0.40"


def test_charts_are_accessible_images_without_style_attributes():
    bar = parse(bars([("Support", [("base", 0.3)])]))
    line = parse(
        charts.line_chart(
            [("Support", [(date(2025, 1, 1), 0.3)])],
            start=date(2025, 1, 1),
            end=date(2025, 1, 31),
            chart_id="t",
            title="Trend",
            description="Per day.",
        )
    )

    for root, title in ((bar, "Edit distance"), (line, "Trend")):
        assert (root.get("role"), root.get("aria-label")) == ("img", title)
        assert root.find(SVG + "title").text == title
        assert root.find(SVG + "desc").text
        assert root.get("aria-describedby") == root.find(SVG + "desc").get("id")
        assert not [e.tag for e in root.iter() if "style" in e.attrib]


def test_no_data_renders_a_message_instead_of_a_chart():
    for output in (
        bars([]),
        bars([("Support", [("base", None)])]),
        bars([("Support", [])]),
        charts.line_chart([], start=date(2025, 1, 1), end=date(2025, 1, 2), chart_id="t", title="T", description="D"),
        charts.line_chart(
            [("Support", [])], start=date(2025, 1, 1), end=date(2025, 1, 2), chart_id="t", title="T", description="D"
        ),
    ):
        assert "<svg" not in output
        assert parse(output).text == "No reviews in this period."


def test_the_trend_line_has_a_dot_per_day_with_a_value_and_a_line_per_domain():
    series = [
        ("Support", [(date(2025, 1, 1), 0.4), (date(2025, 1, 10), 0.2), (date(2025, 1, 20), 0.1)]),
        ("News", [(date(2025, 1, 5), 0.6), (date(2024, 12, 1), 0.9)]),  # the second is before the window
        (HOSTILE, []),  # nothing: no line, no legend entry
    ]

    svg = charts.line_chart(
        series, start=date(2025, 1, 1), end=date(2025, 1, 31), chart_id="t", title="Trend", description="D"
    )

    root = parse(svg)
    points = elements(root, "circle", "point")
    assert len(points) == 4
    assert len(elements(root, "polyline", "line")) == 1  # a single day draws a dot, not a line
    first, later = (float(points[0].get("cy")), float(points[1].get("cy")))
    assert later > first  # a lower value sits lower (SVG y grows downwards)
    assert float(points[0].get("cx")) < float(points[1].get("cx"))
    assert points[1].find(SVG + "title").text == "Support, 2025-01-10: 0.20"
    legend = [entry.find(SVG + "text").text for entry in elements(root, "g", "legend-entry")]
    assert legend == ["Support", "News"]
    assert {"2025-01-01", "2025-01-31"} <= set(texts(root))
