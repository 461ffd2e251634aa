"""The 45 FPHA actions as data: a grasp, objects, and a motion program each.

An action is a grip posture, a base wrist orientation, object parts (held by
the hand, or by the unseen other hand and so fixed in the world), keyframes of
wrist translation / rotation / posture over the phase s in [0, 1], and periodic
components.  The set is built to carry the structure the study needs:

1. **Temporal order matters.** ``close_X`` is ``open_X`` played backwards
   (``reverse_of``), and so is receive_coin of give_coin: the same frames in
   opposite order, so a bag of frames cannot tell them apart.
2. **Pose error matters.** Four look-alike groups share object, grip and wrist
   motion and differ only by a finger articulation whose fingertip amplitude is
   about 10-20 mm (``art`` and the finger channels of ``osc``, scaled by the
   ``articulation_gap`` knob): sprinkle / put_salt, scratch_sponge /
   squeeze_sponge, use_flash / light_candle, give_coin / give_card.
3. **Action helps pose.** Objects are solid in the depth render and sit where
   the grasp puts them, so which joints they hide depends on the action.
4. **Variation** is added per sequence by ``handfuse.synth.motion``.

Units: mm and degrees.  World frame: X right, Y forward, Z up.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..skeleton import ACTIONS

# ----------------------------------------------------------------------------- postures
# (5, 4): thumb [abd, opp, mcp, ip]; index, middle, ring, pinky [abd, mcp, pip, dip]
_F = lambda *rows: np.array(rows, dtype=float)  # noqa: E731
POSTURES: dict[str, np.ndarray] = {
    "flat": _F([15, 10, 5, 5], [3, 5, 5, 3], [0, 5, 5, 3], [-3, 5, 5, 3], [-5, 5, 5, 3]),
    "spread": _F([35, 10, 0, 0], [15, 0, 0, 0], [0, 0, 0, 0], [-12, 0, 0, 0], [-20, 0, 0, 0]),
    "relaxed": _F([20, 30, 15, 15], [0, 25, 35, 20], [0, 25, 35, 20], [0, 28, 38, 22], [0, 30, 40, 25]),
    "fist": _F([5, 55, 35, 45], [0, 85, 100, 60], [0, 85, 100, 60], [0, 85, 100, 60], [0, 85, 100, 60]),
    "power_big": _F([10, 60, 20, 20], [0, 40, 55, 35], [0, 40, 55, 35], [0, 42, 58, 38], [0, 45, 60, 40]),
    "power_small": _F([5, 65, 30, 30], [0, 60, 80, 50], [0, 60, 80, 50], [0, 62, 82, 52], [0, 65, 85, 55]),
    "pinch": _F([20, 50, 25, 20], [5, 45, 40, 20], [0, 55, 60, 40], [0, 65, 70, 45], [0, 70, 75, 45]),
    "tripod": _F([15, 55, 25, 25], [5, 40, 45, 20], [0, 40, 50, 25], [0, 65, 75, 45], [0, 70, 80, 45]),
    "lateral": _F([0, 25, 15, 10], [0, 55, 65, 35], [0, 70, 85, 50], [0, 75, 90, 55], [0, 80, 90, 55]),
    "point": _F([5, 50, 35, 40], [5, 5, 5, 3], [0, 85, 100, 60], [0, 85, 100, 60], [0, 85, 100, 60]),
    "hook_index": _F([5, 50, 35, 40], [5, 45, 70, 50], [0, 85, 100, 60], [0, 85, 100, 60], [0, 85, 100, 60]),
    "spherical": _F([35, 60, 15, 15], [10, 35, 40, 25], [0, 35, 40, 25], [-8, 35, 40, 25], [-15, 35, 40, 25]),
    "shake": _F([35, 20, 10, 5], [0, 30, 25, 10], [0, 30, 25, 10], [0, 32, 28, 12], [0, 35, 30, 15]),
    "cup": _F([25, 25, 10, 10], [3, 25, 25, 10], [0, 25, 25, 10], [-3, 28, 28, 12], [-5, 30, 30, 15]),
}
# Finger channels: which posture entries a unit of articulation moves (degrees per degree).
CHANNELS: dict[str, np.ndarray] = {
    "grip": _F([0, 0, 0.5, 0.5], [0, 1, 1, 0.7], [0, 1, 1, 0.7], [0, 1, 1, 0.7], [0, 1, 1, 0.7]),
    "tips": _F([0, 0, 0, 0.5], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]),
    "thumb": _F([0, 0, 0.6, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]),
    "index": _F([0, 0, 0, 0], [0, 0.5, 1, 0.7], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]),
    "rub": _F([0.5, 0, 0, 1], [0, 0, 0.3, -0.5], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]),
    "spread": _F([1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [-1, 0, 0, 0], [-1.5, 0, 0, 0]),
}
WRIST_CHANNELS = ("X", "Y", "Z", "pitch", "roll", "yaw")

# Base wrist orientations in the world: (where the fingers point, where the palm faces).
ORIENTS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "side": ((0.0, 1.0, 0.25), (-1.0, 0.0, 0.0)),  # thumb up, palm to the left
    "down": ((0.0, 1.0, 0.1), (0.0, 0.0, -1.0)),  # palm towards the table
    "up": ((0.0, 1.0, 0.1), (0.0, 0.0, 1.0)),  # palm up
    "front": ((0.0, 0.3, 1.0), (0.0, 1.0, 0.0)),  # fingers up, palm away from the person
    "toward": ((0.0, 0.3, 1.0), (0.0, -1.0, 0.0)),  # fingers up, palm towards the person
}


# ----------------------------------------------------------------------------- objects
@dataclass(frozen=True)
class Part:
    """A solid primitive placed relative to a grasp anchor in the hand frame.

    kind: "cyl" (radius, half-length), "box" (half extents x, y, z) or "stick" (a capsule:
    radius, half-length).  anchor: "palm" (the palmar surface centre, pushed out by the
    part's radius along +z), "pinch" (between the thumb and index tips) or "below" (under
    the palm, along +z).  axis: the part's long axis in the hand frame.  offset: mm in the
    hand frame from the anchor.  world: held by the other (unseen) hand, so fixed in the
    world at its pose on the first frame of the program.
    """

    kind: str
    dims: tuple[float, ...]
    anchor: str = "palm"
    axis: tuple[float, float, float] = (1.0, 0.0, 0.0)
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    world: bool = False


def _cap(r, h, below_len, below_r):  # a cap in the hand, the container under it held by the other hand
    return (Part("cyl", (r, h / 2), "below", (0, 0, 1), (0, 0, h / 2)),
            Part("cyl", (below_r, below_len / 2), "below", (0, 0, 1), (0, 0, h + below_len / 2), world=True))


OBJECTS: dict[str, tuple[Part, ...]] = {
    "juice_cap": _cap(15, 16, 170, 34),
    "jar_lid": _cap(44, 22, 90, 43),
    "milk_cap": _cap(13, 14, 150, 30) + (Part("box", (36, 36, 40), "below", (0, 0, 1), (0, 0, 70), world=True),),
    "soap_pump": _cap(14, 28, 130, 30),
    "juice_bottle": (Part("cyl", (35, 95), offset=(-20, 0, 0)),),
    "milk_carton": (Part("box", (95, 34, 34), offset=(-20, 0, 0)),),
    "soap_bottle": (Part("cyl", (30, 70), offset=(-15, 0, 0)),),
    "wine_bottle": (Part("cyl", (37, 140), offset=(-60, 0, 0)),),
    "shaker": (Part("cyl", (18, 35), "pinch", (1, 0, 0), (-5, 0, 6)),),
    "spoon": (Part("stick", (4, 75), "pinch", (0.3, -1, 0.2), (0, -25, 0)),),
    "fork": (Part("stick", (4, 75), "palm", (0.9, 0.2, 0.4), (10, 0, 0)),),
    "pen": (Part("stick", (5, 70), "pinch", (0.2, -1, -0.5), (0, -20, 0)),),
    "mug": (Part("cyl", (40, 48), offset=(-5, 0, 10)), Part("stick", (6, 25), "palm", (1, 0, 0), (-5, 0, -30))),
    "tea_bag": (Part("box", (12, 3, 15), "pinch", (0, 0, 1), (0, 0, 18)),),
    "sponge": (Part("box", (48, 33, 20), "palm", (1, 0, 0), (0, -5, 8)),),
    "flashlight": (Part("cyl", (17, 70), offset=(-25, 0, 0)),),
    "lighter": (Part("box", (12, 22, 35), "palm", (1, 0, 0), (-5, 0, 0)),),
    "paper": (Part("box", (3, 70, 100), "pinch", (1, 0, 0), (0, 55, 40)),),
    "crumple": (Part("box", (35, 35, 30), "palm", (1, 0, 0), (0, 10, 10)),),
    "envelope": (Part("box", (55, 80, 3), "pinch", (1, 0, 0), (0, 50, 0), world=True),),
    "letter_in_envelope": (Part("box", (50, 75, 2), "pinch", (1, 0, 0), (0, 55, 0)),
                           Part("box", (55, 45, 4), "pinch", (1, 0, 0), (0, 95, 0), world=True)),
    "letter": (Part("box", (75, 2, 100), "pinch", (1, 0, 0), (-40, 0, 60)),),
    "book": (Part("box", (90, 120, 15), "below", (1, 0, 0), (30, 40, 45), world=True),),
    "calculator": (Part("box", (40, 75, 8), "below", (1, 0, 0), (0, 40, 60), world=True),),
    "can": (Part("cyl", (33, 60), "below", (0, 0, 1), (0, 20, 90), world=True),),
    "phone": (Part("box", (35, 70, 4), "pinch", (1, 0, 0), (-10, 45, 0)),),
    "glasses": (Part("stick", (3, 55), "pinch", (1, 0, 0), (-55, 10, 0)), Part("stick", (3, 60), "pinch", (0, 1, 0), (0, 60, 0))),
    "wallet": (Part("box", (45, 55, 9), "pinch", (1, 0, 0), (-20, 30, 0)),),
    "coin": (Part("cyl", (11, 1.2), "pinch", (1, 0, 0)),),
    "card": (Part("box", (1, 27, 43), "pinch", (1, 0, 0), (0, 20, 25)),),
    "wine_glass": (Part("stick", (4, 40), "pinch", (0, 0, 1), (0, 0, 20)), Part("cyl", (35, 40), "pinch", (0, 0, 1), (0, 0, -50))),
}


# ----------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class Key:
    """A keyframe at phase s: world translation (mm), wrist rotation (pitch, roll, yaw deg), posture."""

    s: float
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rot: tuple[float, float, float] = (0.0, 0.0, 0.0)
    posture: str | None = None


@dataclass(frozen=True)
class Osc:
    """A periodic component: channel (wrist X/Y/Z/pitch/roll/yaw, or a finger channel), amplitude,
    cycles over the window [start, end] of the phase, and starting phase (fraction of a cycle)."""

    channel: str
    amp: float
    cycles: float
    start: float = 0.0
    end: float = 1.0
    phase: float = 0.0


@dataclass(frozen=True)
class Action:
    grip: str
    orient: str
    obj: str | None = None
    keys: tuple[Key, ...] = ()
    osc: tuple[Osc, ...] = ()
    art: tuple[tuple[str, float], ...] = ()  # static finger articulation (channel, degrees), scaled by the gap
    reverse_of: str | None = None  # played backwards: same frames, opposite order

    def __post_init__(self):
        assert self.grip in POSTURES and self.orient in ORIENTS and (self.obj is None or self.obj in OBJECTS)
        for k in self.keys:
            assert k.posture is None or k.posture in POSTURES
        for o in self.osc:
            assert o.channel in WRIST_CHANNELS or o.channel in CHANNELS
        for ch, _ in self.art:
            assert ch in CHANNELS


def _twist_then_lift(obj, grip, amp, cycles, lift, end=0.65, orient="down"):
    """open_X: twist the cap with regrasps, then lift it away (close_X plays this backwards)."""
    return Action(grip, orient, obj,
                  keys=(Key(end, (0, 0, 0), (0, 0, 0)), Key(1.0, lift, (-20, 0, 0), "relaxed")),
                  osc=(Osc("roll", amp, cycles, 0.0, end), Osc("grip", 12, cycles, 0.0, end, 0.25)))


_FORWARD = (Key(0.65, (0, 120, 20)), Key(0.85, (0, 130, 25)), Key(1.0, (0, 130, 25), None))
_SPONGE_RUB = (Osc("Y", 20, 3), Osc("X", 6, 1.5))

ACTION_SPECS: dict[str, Action] = {
    "open_juice_bottle": _twist_then_lift("juice_cap", "pinch", 35, 3, (0, 20, 90)),
    "close_juice_bottle": Action("pinch", "down", "juice_cap", reverse_of="open_juice_bottle"),
    "pour_juice_bottle": Action("power_big", "side", "juice_bottle",
                                keys=(Key(0.3, (0, 20, 40)), Key(0.6, (0, 30, 40), (0, -70, 0)), Key(0.85, (0, 30, 40), (0, -75, 0)),
                                      Key(1.0, (0, 20, 30), (0, -20, 0)))),
    "open_peanut_butter": _twist_then_lift("jar_lid", "spherical", 45, 2, (0, 10, 80)),
    "close_peanut_butter": Action("spherical", "down", "jar_lid", reverse_of="open_peanut_butter"),
    "prick": Action("power_small", "down", "fork", osc=(Osc("Z", 35, 3), Osc("pitch", 12, 3, phase=0.25))),
    "sprinkle": Action("pinch", "side", "shaker", osc=(Osc("pitch", 20, 3), Osc("rub", 28, 2))),
    "scoop_spoon": Action("lateral", "side", "spoon",
                          keys=(Key(0.4, (0, 40, -50), (40, 0, 0)), Key(0.8, (0, 10, 30), (-20, 0, 0)), Key(1.0, (0, 0, 30), (-20, 0, 0)))),
    "put_sugar": Action("lateral", "side", "spoon",
                        keys=(Key(0.4, (0, 50, 0)), Key(0.7, (0, 50, 0), (0, -80, 0)), Key(1.0, (0, 30, 10)))),
    "stir": Action("tripod", "down", "spoon", osc=(Osc("X", 25, 4), Osc("Y", 25, 4, phase=0.25))),
    "open_milk": _twist_then_lift("milk_cap", "pinch", 25, 4, (0, 0, 60), end=0.7, orient="side"),
    "close_milk": Action("pinch", "side", "milk_cap", reverse_of="open_milk"),
    "pour_milk": Action("power_big", "side", "milk_carton",
                        keys=(Key(0.25, (0, 20, 40)), Key(0.5, (0, 30, 40), (15, -80, 0)), Key(0.85, (0, 30, 40), (15, -85, 0)),
                              Key(1.0, (0, 20, 30)))),
    "drink_mug": Action("power_big", "side", "mug",
                        keys=(Key(0.5, (0, -120, 120), (-20, -40, 0)), Key(0.75, (0, -120, 120), (-25, -45, 0)), Key(1.0))),
    "put_tea_bag": Action("pinch", "down", "tea_bag",
                          keys=(Key(0.5, (0, 20, -80)), Key(1.0, (0, 20, -60))), osc=(Osc("Z", 15, 3, 0.5, 0.9),)),
    "put_salt": Action("pinch", "side", "shaker", osc=(Osc("pitch", 20, 3),)),
    "open_liquid_soap": _twist_then_lift("soap_pump", "tripod", 30, 2, (0, 20, 70)),
    "close_liquid_soap": Action("tripod", "down", "soap_pump", reverse_of="open_liquid_soap"),
    "pour_liquid_soap": Action("power_big", "side", "soap_bottle",
                               keys=(Key(0.3, (0, 20, 30), (0, -60, 0)), Key(1.0, (0, 20, 30), (0, -60, 0))),
                               osc=(Osc("grip", 12, 3, 0.35, 1.0),)),
    "wash_sponge": Action("power_big", "down", "sponge", osc=(Osc("X", 40, 3), Osc("Y", 40, 3, phase=0.25))),
    "flip_sponge": Action("spherical", "down", "sponge",
                          keys=(Key(0.3, (0, 0, 40)), Key(0.6, (0, 0, 40), (0, 170, 0)), Key(1.0, (0, 0, 20), (0, 170, 0)))),
    "scratch_sponge": Action("power_big", "down", "sponge", osc=_SPONGE_RUB + (Osc("tips", 18, 2),)),
    "squeeze_sponge": Action("power_big", "down", "sponge", osc=_SPONGE_RUB + (Osc("grip", 13, 2),)),
    "open_soda_can": Action("point", "down", "can",
                            keys=(Key(0.3, posture="point"), Key(0.6, (0, -10, 10), posture="hook_index"), Key(1.0, (0, -20, 20), posture="hook_index"))),
    "use_flash": Action("power_small", "side", "flashlight", keys=(Key(0.3, (30, 40, 20)), Key(1.0, (30, 40, 20))),
                        art=(("thumb", 12),)),
    "write": Action("tripod", "down", "pen", keys=(Key(1.0, (50, 0, 0)),), osc=(Osc("X", 15, 5), Osc("Y", 4, 10))),
    "tear_paper": Action("pinch", "side", "paper",
                         keys=(Key(0.4, (0, 0, 0)), Key(0.6, (30, -20, 20), (0, -50, 0)), Key(1.0, (35, -25, 25), (0, -55, 0)))),
    "squeeze_paper": Action("flat", "down", "crumple", keys=(Key(0.7, posture="fist"), Key(1.0, posture="fist")), osc=(Osc("Z", 10, 2),)),
    "open_letter": Action("pinch", "side", "envelope", keys=(Key(0.6, (0, 0, 40), (-40, 0, 0)), Key(1.0, (0, 0, 45), (-45, 0, 0)))),
    "take_letter_from_enveloppe": Action("pinch", "side", "letter_in_envelope", keys=(Key(0.8, (0, -90, 30)), Key(1.0, (0, -95, 30)))),
    "read_letter": Action("lateral", "toward", "letter", keys=(Key(0.3, (0, -60, 80)), Key(1.0, (0, -60, 80))), osc=(Osc("pitch", 5, 2),)),
    "flip_pages": Action("flat", "down", "book", osc=(Osc("roll", 60, 3), Osc("thumb", 20, 3, phase=0.5))),
    "use_calculator": Action("point", "down", "calculator", osc=(Osc("Z", 12, 6), Osc("X", 20, 2), Osc("index", 10, 6, phase=0.5))),
    "light_candle": Action("power_small", "side", "lighter", keys=(Key(0.3, (30, 40, 20)), Key(1.0, (30, 40, 20))),
                           osc=(Osc("thumb", 12, 1.5, 0.3, 0.9),)),
    "charge_cell_phone": Action("lateral", "side", "phone", keys=(Key(0.6, (0, 80, -30)), Key(1.0, (0, 85, -30))), osc=(Osc("Y", 8, 2, 0.6, 1.0),)),
    "unfold_glasses": Action("pinch", "side", "glasses", keys=(Key(0.6, (0, 0, 10), (0, 0, 60)), Key(1.0, (0, 0, 10), (0, 0, 65)))),
    "clean_glasses": Action("pinch", "side", "glasses", osc=(Osc("rub", 15, 5), Osc("X", 10, 5))),
    "open_wallet": Action("lateral", "up", "wallet", keys=(Key(0.7, (0, 0, 20), (0, 30, 0), "flat"), Key(1.0, (0, 0, 20), (0, 30, 0), "flat"))),
    "give_coin": Action("pinch", "down", "coin", keys=_FORWARD[:2] + (Key(1.0, (0, 130, 25), posture="relaxed"),)),
    "receive_coin": Action("pinch", "down", "coin", reverse_of="give_coin"),  # reach out open, take it, bring it back
    "give_card": Action("pinch", "down", "card", keys=_FORWARD[:2] + (Key(1.0, (0, 130, 25), posture="relaxed"),),
                        art=(("index", 12), ("thumb", -6))),
    "pour_wine": Action("power_big", "side", "wine_bottle",
                        keys=(Key(0.4, (0, 60, 30)), Key(0.8, (0, 60, 30), (0, -60, 0)), Key(1.0, (0, 60, 30), (0, -60, 0)))),
    "toast_wine": Action("pinch", "side", "wine_glass",
                         keys=(Key(0.45, (0, 100, 60)), Key(0.55, (0, 110, 60)), Key(1.0, (0, 20, 20)))),
    "handshake": Action("shake", "side", None, keys=(Key(0.4, (0, 140, 0)), Key(1.0, (0, 140, 0))), osc=(Osc("Z", 30, 3, 0.4, 0.9),)),
    "high_five": Action("spread", "front", None, keys=(Key(0.5, (0, 150, 120)), Key(1.0, (0, 20, 20)))),
}
assert tuple(ACTION_SPECS) == ACTIONS, "ACTION_SPECS must follow FPHA's label order"
LOOKALIKE_GROUPS = (("sprinkle", "put_salt"), ("scratch_sponge", "squeeze_sponge"),
                    ("use_flash", "light_candle"), ("give_coin", "give_card"))
REVERSE_PAIRS = tuple((a.reverse_of, name) for name, a in ACTION_SPECS.items() if a.reverse_of)


def program(name: str) -> tuple[Action, bool]:
    """The action whose motion is generated, and whether its frames are then reversed."""
    spec = ACTION_SPECS[name]
    return (ACTION_SPECS[spec.reverse_of], True) if spec.reverse_of else (spec, False)


__all__ = ["ACTION_SPECS", "POSTURES", "CHANNELS", "ORIENTS", "OBJECTS", "Action", "Key", "Osc", "Part",
           "LOOKALIKE_GROUPS", "REVERSE_PAIRS", "program"]
