"""PIL renderer of the toy world's driving scenes (the ego car's forward view, in perspective).

The scene graph (kit.data.toyworld) says WHAT is in the scene; this module decides WHERE and HOW it
is drawn and returns the pixel boxes of the drawn objects (for CODA-LM's region perception).
No library draws toy driving scenes, so this is written by hand with PIL.ImageDraw.

Composition (fixed, so tiny models can learn it at 64 px): horizon at 38% of the height, the
ego lane at the bottom centre (42% of the width at the bottom edge), one lane on each side when the
graph has one. Decisive cues are large and high contrast: the traffic light hangs at the top centre
(a black housing with big lamps, turn arrows in their own black boxes beside it), solid lines are
wide YELLOW bands, dashed lines wide WHITE dashes, turn lanes carry a big white arrow at the bottom
of the ego lane, and obstacles in the ego lane stand large in the lower centre.
"""
from __future__ import annotations

import math

from PIL import Image, ImageDraw

HORIZON = 0.38      # horizon height / image height
LANE_W = 0.42       # ego lane width at the bottom edge / image width
SS = 2              # supersampling factor (drawn at SS x size, then downsampled: smooth edges)

SKY = {"day": (150, 195, 235), "overcast": (170, 178, 188), "dusk": (235, 170, 130)}
GRASS = {"day": (90, 150, 70), "overcast": (95, 130, 80), "dusk": (110, 120, 60)}
ROAD = (92, 92, 96)
YELLOW = (255, 210, 0)
WHITE = (250, 250, 250)
LAMP_ON = {"red": (255, 30, 30), "yellow": (255, 200, 0), "green": (0, 230, 60)}
LAMP_OFF = (55, 55, 55)


class _Canvas:
    def __init__(self, W: int, H: int, ss: int = SS):
        self.W, self.H, self.ss = W, H, ss
        self.img = Image.new("RGB", (W * ss, H * ss))
        self.d = ImageDraw.Draw(self.img)
        self.hy = HORIZON * H
        self.cx = W / 2

    # geometry in output pixels; drawing scales by ss
    def s(self, pts):
        return [(x * self.ss, y * self.ss) for x, y in pts]

    def X(self, xb: float, y: float) -> float:
        """x at row y of the line that meets the bottom edge at xb (all lines meet at the vanishing point)."""
        return self.cx + (xb - self.cx) * (y - self.hy) / (self.H - self.hy)

    def y_at(self, t: float) -> float:
        """Row of depth scale t (1 = bottom edge, 0 = horizon)."""
        return self.hy + t * (self.H - self.hy)

    def boundary(self, k: float) -> float:
        """Bottom x of lane boundary k: 0 = ego left line, 1 = ego right line, -1/2 = outer edges."""
        return self.cx + (k - 0.5) * LANE_W * self.W

    def poly(self, pts, fill, outline=None, width=1):
        self.d.polygon(self.s(pts), fill=fill, outline=outline, width=width * self.ss if outline else 0)

    def rect(self, x0, y0, x1, y1, fill, outline=None, width=1):
        self.d.rectangle(self.s([(x0, y0), (x1, y1)]), fill=fill, outline=outline,
                         width=width * self.ss if outline else 0)

    def ellipse(self, x0, y0, x1, y1, fill, outline=None, width=1):
        self.d.ellipse(self.s([(x0, y0), (x1, y1)]), fill=fill, outline=outline,
                       width=max(1, int(width * self.ss)) if outline else 0)

    def line(self, pts, fill, width):
        self.d.line(self.s(pts), fill=fill, width=max(1, int(width * self.ss)))

    def band(self, xb: float, y0: float, y1: float, half_bottom: float, fill):
        """A lane-line band along boundary xb between rows y0 < y1 (width grows with depth)."""
        def edge(y, sgn):
            t = (y - self.hy) / (self.H - self.hy)
            return self.X(xb, y) + sgn * half_bottom * t
        self.poly([(edge(y0, -1), y0), (edge(y0, 1), y0), (edge(y1, 1), y1), (edge(y1, -1), y1)], fill)

    def done(self) -> Image.Image:
        return self.img.resize((self.W, self.H), Image.LANCZOS) if self.ss != 1 else self.img


def _clip_box(box, W, H):
    x0, y0, x1, y1 = box
    x0, y0 = max(0.0, x0), max(0.0, y0)
    x1, y1 = min(float(W), x1), min(float(H), y1)
    return [int(round(x0)), int(round(y0)), max(1, int(round(x1 - x0))), max(1, int(round(y1 - y0)))]


# --- objects -----------------------------------------------------------------------------------

def _car(c: _Canvas, x: float, t: float, color, *, kind="car", turning=None, overturned=False):
    """A car (rear view) standing on row y(t), centred at x; returns its (x0, y0, x1, y1)."""
    w = 0.8 * LANE_W * c.W * t * (1.15 if kind == "truck" else 1.0)
    h = w * (0.95 if kind == "truck" else 0.62)
    yb = c.y_at(t)
    x0, x1, y0 = x - w / 2, x + w / 2, yb - h
    if turning:  # turning cars are seen at an angle: skew the body toward the turn
        sk = (-1 if turning == "left" else 1) * 0.35 * w
        body = [(x0 + sk, y0), (x1 + sk, y0), (x1, yb - 0.12 * h), (x0, yb - 0.12 * h)]
    else:
        body = [(x0, y0), (x1, y0), (x1, yb - 0.12 * h), (x0, yb - 0.12 * h)]
    wheel_r = 0.12 * w
    if overturned:  # upside down: wheels in the air, body dark underside on top
        c.rect(x0, y0 + 0.25 * h, x1, yb, fill=color)
        c.rect(x0 + 0.1 * w, y0 + 0.35 * h, x1 - 0.1 * w, y0 + 0.6 * h, fill=(40, 40, 40))
        for wx in (x0 + 0.2 * w, x1 - 0.2 * w):
            c.ellipse(wx - wheel_r, y0, wx + wheel_r, y0 + 2 * wheel_r, fill=(20, 20, 20))
        return (x0, y0, x1, yb)
    for wx in (x0 + 0.15 * w, x1 - 0.15 * w):
        c.rect(wx - wheel_r, yb - 0.22 * h, wx + wheel_r, yb, fill=(20, 20, 20))
    c.poly(body, fill=color)
    # rear window and tail lights
    wy0, wy1 = y0 + 0.1 * h, y0 + (0.35 if kind == "car" else 0.25) * h
    bx0 = body[0][0] + 0.12 * w
    bx1 = body[1][0] - 0.12 * w
    c.poly([(bx0, wy0), (bx1, wy0), (bx1 - 0.03 * w, wy1), (bx0 + 0.03 * w, wy1)], fill=(45, 55, 70))
    ty = y0 + 0.55 * h
    tw = 0.14 * w
    lx0 = body[3][0] + 0.02 * w + (body[0][0] - body[3][0]) * 0.4
    rx1 = body[2][0] - 0.02 * w + (body[1][0] - body[2][0]) * 0.4
    c.rect(lx0, ty, lx0 + tw, ty + 0.12 * h, fill=(200, 20, 20))
    c.rect(rx1 - tw, ty, rx1, ty + 0.12 * h, fill=(200, 20, 20))
    if turning:  # a big orange indicator on the turning side
        ix = lx0 - 0.05 * w if turning == "left" else rx1 - tw * 0.2
        r = 0.13 * w
        c.ellipse(ix - r * 0.3, ty - r * 0.6, ix + r * 1.3, ty + r * 1.0, fill=(255, 140, 0))
    xs = [p[0] for p in body]
    return (min(xs), y0, max(xs), yb)


def _person(c: _Canvas, x: float, t: float, shirt, *, rider=False):
    h = 1.25 * 0.8 * LANE_W * c.W * t * 0.62 * (1.0 if not rider else 0.9)
    yb = c.y_at(t)
    w = 0.32 * h
    if rider:  # bicycle seen from behind/side: two wheels plus frame, rider on top
        wr = 0.22 * h
        c.ellipse(x - 1.6 * wr, yb - 2 * wr, x + 0.4 * wr, yb, fill=None, outline=(20, 20, 20), width=max(1, wr * 0.35))
        c.ellipse(x - 0.4 * wr, yb - 2 * wr, x + 1.6 * wr, yb, fill=None, outline=(20, 20, 20), width=max(1, wr * 0.35))
        c.line([(x - 0.6 * wr, yb - wr), (x, yb - 2.2 * wr), (x + 0.6 * wr, yb - wr)], fill=(30, 30, 200), width=max(1, wr * 0.25))
        yb = yb - 1.6 * wr
        h = 0.75 * h
    head = 0.22 * h
    c.rect(x - 0.3 * w, yb - 0.45 * h, x - 0.05 * w, yb, fill=(40, 40, 90))           # legs
    c.rect(x + 0.05 * w, yb - 0.45 * h, x + 0.3 * w, yb, fill=(40, 40, 90))
    c.rect(x - 0.5 * w, yb - 0.8 * h, x + 0.5 * w, yb - 0.42 * h, fill=shirt)         # torso
    c.ellipse(x - head / 2, yb - h, x + head / 2, yb - h + head, fill=(230, 190, 150))  # head
    x0 = x - (1.6 * 0.22 * h / 0.75 if rider else 0.5 * w)
    x1 = x + (1.6 * 0.22 * h / 0.75 if rider else 0.5 * w)
    return (min(x0, x - 0.5 * w), yb - h, max(x1, x + 0.5 * w), c.y_at(t))


def _cone(c: _Canvas, x: float, t: float):
    h = 0.16 * LANE_W * c.W * t * 1.6
    yb = c.y_at(t)
    c.poly([(x - 0.35 * h, yb), (x + 0.35 * h, yb), (x + 0.08 * h, yb - h), (x - 0.08 * h, yb - h)], fill=(255, 110, 0))
    c.poly([(x - 0.22 * h, yb - 0.45 * h), (x + 0.22 * h, yb - 0.45 * h), (x + 0.16 * h, yb - 0.62 * h),
            (x - 0.16 * h, yb - 0.62 * h)], fill=WHITE)
    return (x - 0.35 * h, yb - h, x + 0.35 * h, yb)


def _barrier(c: _Canvas, x: float, t: float, width_frac=0.8):
    w = width_frac * LANE_W * c.W * t
    h = 0.3 * w
    yb = c.y_at(t)
    x0, y0 = x - w / 2, yb - h
    c.rect(x0 + 0.05 * w, y0, x0 + 0.1 * w, yb, fill=(60, 60, 60))
    c.rect(x0 + 0.9 * w, y0, x0 + 0.95 * w, yb, fill=(60, 60, 60))
    c.rect(x0, y0, x0 + w, y0 + 0.55 * h, fill=WHITE)
    n = 6
    for i in range(n):  # red/white diagonal stripes
        sx = x0 + i * w / n
        c.poly([(sx, y0 + 0.55 * h), (sx + w / (2 * n), y0 + 0.55 * h), (sx + w / n, y0), (sx + w / (2 * n), y0)],
               fill=(220, 30, 30))
    return (x0, y0, x0 + w, yb)


def _debris(c: _Canvas, x: float, t: float, rng_vals):
    w = 0.7 * LANE_W * c.W * t
    yb = c.y_at(t)
    boxes = []
    for i, (dx, sz, shade) in enumerate(rng_vals):
        cx_, s_ = x + dx * w / 2, sz * w * 0.3
        col = (120 + shade, 90 + shade // 2, 50)
        c.poly([(cx_ - s_, yb), (cx_ - 0.6 * s_, yb - 0.8 * s_), (cx_ + 0.2 * s_, yb - s_),
                (cx_ + s_, yb - 0.3 * s_), (cx_ + 0.8 * s_, yb)], fill=col)
        boxes.append((cx_ - s_, yb - s_, cx_ + s_, yb))
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), yb)


def _animal(c: _Canvas, x: float, t: float):
    w = 0.55 * LANE_W * c.W * t
    h = 0.55 * w
    yb = c.y_at(t)
    col = (150, 90, 40)
    for lx in (0.15, 0.3, 0.7, 0.85):  # legs
        c.rect(x - w / 2 + lx * w - 0.04 * w, yb - 0.45 * h, x - w / 2 + lx * w + 0.04 * w, yb, fill=col)
    c.ellipse(x - 0.45 * w, yb - 0.85 * h, x + 0.35 * w, yb - 0.4 * h, fill=col)       # body
    c.ellipse(x + 0.25 * w, yb - h, x + 0.5 * w, yb - 0.62 * h, fill=(120, 70, 30))    # head
    return (x - 0.5 * w, yb - h, x + 0.5 * w, yb)


def _traffic_light(c: _Canvas, light: dict):
    W, H = c.W, c.H
    hw, hh = 0.1 * W, 0.34 * H
    x0, y0 = c.cx - hw / 2, 0.02 * H
    c.rect(c.cx - 0.01 * W, 0, c.cx + 0.01 * W, y0, fill=(40, 40, 40))
    c.rect(x0, y0, x0 + hw, y0 + hh, fill=(15, 15, 15))
    r = min(0.4 * hw, hh / 7)
    objs = []
    for i, col in enumerate(("red", "yellow", "green")):
        ly = y0 + hh * (i + 0.5) / 3
        on = light["color"] == col
        if on:  # a halo makes the lit lamp bigger at 64 px
            c.ellipse(c.cx - r * 1.25, ly - r * 1.25, c.cx + r * 1.25, ly + r * 1.25, fill=tuple(v // 2 for v in LAMP_ON[col]))
        c.ellipse(c.cx - r, ly - r, c.cx + r, ly + r, fill=LAMP_ON[col] if on else LAMP_OFF)
    objs.append({"kind": "traffic_light", "box": (x0, y0, x0 + hw, y0 + hh)})
    arrow = light.get("arrow")
    if arrow:
        s = 0.1 * W
        ax0 = x0 - s - 0.01 * W if arrow == "left" else x0 + hw + 0.01 * W
        ay0 = y0 + hh - s
        c.rect(ax0, ay0, ax0 + s, ay0 + s, fill=(15, 15, 15))
        m = ay0 + s / 2
        sgn = -1 if arrow == "left" else 1
        tip, back = ax0 + s / 2 + sgn * 0.42 * s, ax0 + s / 2 - sgn * 0.4 * s
        neck = ax0 + s / 2 + sgn * 0.02 * s
        c.poly([(back, m - 0.12 * s), (neck, m - 0.12 * s), (neck, m - 0.32 * s), (tip, m),
                (neck, m + 0.32 * s), (neck, m + 0.12 * s), (back, m + 0.12 * s)], fill=LAMP_ON["green"])
        objs.append({"kind": "arrow_light", "box": (ax0, ay0, ax0 + s, ay0 + s)})
    return objs


def _sign(c: _Canvas, sign: dict):
    W, H = c.W, c.H
    r = 0.075 * W
    x, y = 0.78 * W, 0.22 * H  # inside a centre square crop (CLIP preprocess) too
    c.rect(x - 0.008 * W, y, x + 0.008 * W, c.y_at(0.45), fill=(70, 70, 70))
    if sign["kind"] == "stop":
        pts = [(x + r * math.cos(math.pi / 8 + k * math.pi / 4), y + r * math.sin(math.pi / 8 + k * math.pi / 4)) for k in range(8)]
        c.poly(pts, fill=(220, 20, 20))
        c.rect(x - 0.6 * r, y - 0.15 * r, x + 0.6 * r, y + 0.15 * r, fill=WHITE)
    else:  # speed limit: white disc with a red ring and a black figure
        c.ellipse(x - r, y - r, x + r, y + r, fill=(220, 20, 20))
        c.ellipse(x - 0.72 * r, y - 0.72 * r, x + 0.72 * r, y + 0.72 * r, fill=WHITE)
        c.rect(x - 0.35 * r, y - 0.4 * r, x - 0.1 * r, y + 0.4 * r, fill=(10, 10, 10))
        c.ellipse(x + 0.02 * r, y - 0.4 * r, x + 0.42 * r, y + 0.4 * r, fill=(10, 10, 10))
    return {"kind": "traffic_sign", "box": (x - r, y - r, x + r, y + r)}


def _turn_arrow(c: _Canvas, side: str):
    """A big white turn arrow painted at the bottom of the ego lane."""
    W, H = c.W, c.H
    sgn = -1 if side == "left" else 1
    x = c.cx - sgn * 0.04 * W
    sw = 0.035 * W
    y_top, y_bot = 0.83 * H, 0.995 * H
    c.rect(x - sw, y_top + 0.03 * H, x + sw, y_bot, fill=WHITE)
    ya = y_top + 0.05 * H
    tip = x + sgn * 0.16 * W
    neck = x + sgn * 0.09 * W
    c.poly([(x - sgn * sw, ya - 0.025 * H), (neck, ya - 0.025 * H), (neck, ya - 0.06 * H), (tip, ya + 0.005 * H),
            (neck, ya + 0.07 * H), (neck, ya + 0.035 * H), (x - sgn * sw, ya + 0.035 * H)], fill=WHITE)


# --- the scene ---------------------------------------------------------------------------------

def render_scene(g: dict, W: int, H: int, frame_back: int = 0) -> tuple[Image.Image, list[dict]]:
    """Draw scene graph `g`; `frame_back` = how many frames before the annotated (last) frame.

    Returns (RGB image, objects) with objects = [{"node": graph key, "kind": ..., "box": [x, y, w, h]}].
    """
    c = _Canvas(W, H)
    k = frame_back
    mot = g.get("motion", {})
    sky = g.get("sky", "day")
    c.rect(0, 0, W, c.hy + 1, fill=SKY[sky])
    c.rect(0, c.hy, W, H, fill=GRASS[sky])
    lanes = g["lanes"]
    left_edge = c.boundary(-1) if lanes["left"] != "none" else c.boundary(0)
    right_edge = c.boundary(2) if lanes["right"] != "none" else c.boundary(1)
    pad = 0.03 * W
    c.poly([(c.cx - 1, c.hy), (c.cx + 1, c.hy), (c.X(right_edge + pad, H), H), (c.X(left_edge - pad, H), H)], fill=ROAD)
    # road edges: thin white lines on the outer edges
    for xb in (left_edge - pad * 0.5, right_edge + pad * 0.5):
        c.band(xb, c.hy + 0.02 * H, H, 0.008 * W, fill=(200, 200, 200))
    # ego lane boundaries
    phase = (mot.get("dash_phase", 0.0) + 0.3 * k) % 1.0
    for side, xb in (("left", c.boundary(0)), ("right", c.boundary(1))):
        kind = lanes[side]
        half = 0.028 * W
        if kind == "solid":
            c.band(xb, c.hy + 0.03 * H, H, half, fill=YELLOW)
        elif kind == "dashed":
            # dashes equally spaced in depth parameter u = 1/t (perspective-correct spacing)
            n = 5
            for i in range(-1, n + 1):
                t0 = 1.0 / (1 + 1.2 * (i + phase))
                t1 = 1.0 / (1 + 1.2 * (i + phase + 0.5))
                if t1 <= 0.05 or t0 <= 0:
                    continue
                y0, y1 = c.y_at(min(t1, 1.0)), c.y_at(min(t0, 1.0))
                if y1 - y0 > 0.5:
                    c.band(xb, y0, y1, half, fill=WHITE)
        # "none": the road edge is the ego lane's edge (drawn above)
    if g["ego_lane"] in ("left_turn", "right_turn"):
        _turn_arrow(c, g["ego_lane"].split("_")[0])

    objs: list[dict] = []
    # far things first (painter's order): side-lane cars, front car, ego-lane obstacle
    for side, sgn in (("left_lane_obstacle", -1), ("right_lane_obstacle", 1)):
        ob = g.get(side)
        if not ob:
            continue
        t = ob["t"]
        xb = c.cx + sgn * LANE_W * W
        x = c.X(xb, c.y_at(t)) + sgn * mot.get("side_dx", 0.0) * k * W
        if ob["kind"] in ("car", "truck"):
            box = _car(c, x, t, tuple(ob["color"]), kind=ob["kind"])
        elif ob["kind"] == "road_works":
            box = _barrier(c, x, t)
        else:
            box = _cone(c, x, t)
        objs.append({"node": side, "kind": ob["kind"], "box": box})
    fc = g.get("front_car")
    if fc:
        t = fc["t"] - mot.get("front_dt", 0.0) * k
        dx = {"left": -0.16, "right": 0.16}.get(fc.get("turning") or "", 0.0) * LANE_W * W * (1 + 0.3 * k)
        x = c.cx + dx * t / 0.5  # turning cars drift toward their side (more when nearer)
        box = _car(c, x, t, tuple(fc["color"]), kind=fc["kind"], turning=fc.get("turning"))
        objs.append({"node": "front_car", "kind": fc["kind"], "box": box})
    ob = g.get("ego_obstacle")
    if ob:
        t = ob["t"]
        x = c.cx + ob.get("dx", 0.0) * W + mot.get("obstacle_dx", 0.0) * k * W
        kind = ob["kind"]
        if kind == "pedestrian":
            box = _person(c, x, t, tuple(ob["color"]))
        elif kind == "rider":
            box = _person(c, x, t, tuple(ob["color"]), rider=True)
        elif kind == "cone":
            boxes = [_cone(c, x + dd * W, t) for dd in (-0.07, 0.0, 0.07)]
            box = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
        elif kind == "debris":
            box = _debris(c, x, t, ob["pieces"])
        elif kind == "animal":
            box = _animal(c, x, t)
        elif kind == "overturned_vehicle":
            box = _car(c, x, t, tuple(ob["color"]), overturned=True)
        elif kind == "road_works":
            _cone(c, x - 0.12 * W * t, t + 0.04)
            box = _barrier(c, x, t, width_frac=0.9)
        else:
            raise ValueError(f"scene graph: ego_obstacle.kind {kind!r} is not a known obstacle kind")
        objs.append({"node": "ego_obstacle", "kind": kind, "box": box})
    if g.get("light"):
        for o in _traffic_light(c, g["light"]):
            o["node"] = "light"
            objs.append(o)
    if g.get("sign"):
        o = _sign(c, g["sign"])
        o["node"] = "sign"
        o["kind"] = "stop_sign" if g["sign"]["kind"] == "stop" else "speed_limit_sign"
        objs.append(o)
    img = c.done()
    for o in objs:
        o["box"] = _clip_box(o["box"], W, H)
    return img, objs
