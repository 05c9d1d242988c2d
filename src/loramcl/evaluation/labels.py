"""Point labels that never overlap: greedy placement among candidate positions, then a numbered key.

The classic cartographic approach: each label tries positions around its point (right, left, above,
below, the diagonals; then the same farther out, with a leader line), in the order of the points,
and takes the first whose box (as matplotlib's renderer measures it) lies inside the axes and
touches no marker, no label already placed and no legend. A label with no free position becomes a
number beside its point, listed with its text in a key under the axes (the numbers are placed the
same way). `overlaps(fig)` is what the tests check: the text boxes matplotlib reports.
"""

from __future__ import annotations

from typing import Any, Sequence

OFFSETS = [(6, 4, "left", "bottom"), (6, -4, "left", "top"), (-6, 4, "right", "bottom"), (-6, -4, "right", "top"),
           (0, 8, "center", "bottom"), (0, -8, "center", "top"), (9, 0, "left", "center"), (-9, 0, "right", "center")]
RADII = (1.0, 2.2, 3.6)  # multiples of the offsets above; beyond the first a leader line joins label and point


def _renderer(fig: Any) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    return fig.canvas.get_renderer()


def place_labels(ax: Any, xy: Sequence[tuple[float, float]], texts: Sequence[str], fontsize: float = 7,
                 marker_radius: float | Sequence[float] = 6.0) -> list[Any]:
    """Annotate point i with texts[i] where it overlaps nothing; returns the artists (labels and key).
    `marker_radius`: each marker's radius in points (a scatter's `s` is an area: sqrt(s) / 2).
    Call it after the layout is final (tight_layout moves the axes and would undo the checks)."""
    fig = ax.figure
    renderer = _renderer(fig)
    frame = ax.get_window_extent(renderer)
    radii = [marker_radius] * len(xy) if isinstance(marker_radius, (int, float)) else list(marker_radius)
    taken_boxes = []
    for (x, y), r in zip((ax.transData.transform(p) for p in xy), radii):
        pad = r * fig.dpi / 72.0
        taken_boxes.append(_box(x - pad, y - pad, x + pad, y + pad))
    legend = ax.get_legend()
    if legend is not None:
        taken_boxes.append(legend.get_window_extent(renderer))
    artists, unplaced = [], []
    for i, (point, text) in enumerate(zip(xy, texts)):
        artist = _first_free(ax, point, text, fontsize, renderer, frame, taken_boxes)
        if artist is None:
            unplaced.append(i)
        else:
            artists.append(artist)
    key = []
    for n, i in enumerate(unplaced, start=1):
        artist = _first_free(ax, xy[i], str(n), fontsize, renderer, frame, taken_boxes)
        if artist is not None:
            artists.append(artist)
        key.append(f"{n}: {texts[i]}" + ("" if artist is not None else " (no room for its number)"))
    if key:
        artists.append(fig.text(0.01, 0.005, "   ".join(key), fontsize=fontsize, va="bottom", wrap=True))
    return artists


def _box(x0: float, y0: float, x1: float, y1: float) -> Any:
    from matplotlib.transforms import Bbox

    return Bbox([[x0, y0], [x1, y1]])


def _first_free(ax: Any, point: tuple[float, float], text: str, fontsize: float, renderer: Any, frame: Any,
                taken: list) -> Any:
    for radius in RADII:
        for dx, dy, ha, va in OFFSETS:
            arrow = {"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if radius > 1 else None
            artist = ax.annotate(text, point, xytext=(dx * radius, dy * radius), textcoords="offset points",
                                 ha=ha, va=va, fontsize=fontsize, arrowprops=arrow)
            box = artist.get_window_extent(renderer).expanded(1.05, 1.1)
            if frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1) and \
                    not any(box.overlaps(other) for other in taken):
                taken.append(box)
                return artist
            artist.remove()
    return None


def overlaps(fig: Any) -> list[tuple[str, str]]:
    """Pairs of texts (annotations, axis texts, figure texts) whose rendered boxes overlap."""
    from matplotlib.text import Annotation

    renderer = _renderer(fig)
    texts = [t for ax in fig.axes for t in ax.texts if isinstance(t, Annotation)] + list(fig.texts)
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text()]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)]
