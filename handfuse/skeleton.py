"""The one data contract: the 21-joint FPHA hand skeleton and the 45 FPHA actions.

Everything that needs joint names, their order, the bones, the finger chains or
the action labels imports them from here (pyskl's lesson: the layout lives in
exactly one place).  Order and names follow the First-Person Hand Action
benchmark (Garcia-Hernando et al., CVPR 2018): the wrist, the five MCPs, then
each finger's PIP, DIP and TIP, thumb first.
"""
from __future__ import annotations

JOINTS: tuple[str, ...] = (
    "Wrist",
    "TMCP", "IMCP", "MMCP", "RMCP", "PMCP",
    "TPIP", "TDIP", "TTIP",
    "IPIP", "IDIP", "ITIP",
    "MPIP", "MDIP", "MTIP",
    "RPIP", "RDIP", "RTIP",
    "PPIP", "PDIP", "PTIP",
)
NUM_JOINTS = len(JOINTS)  # 21
JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(JOINTS)}

FINGERS: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")
# Each finger's chain from the wrist outwards: wrist, MCP, PIP, DIP, TIP.
FINGER_CHAINS: dict[str, tuple[int, ...]] = {
    finger: (0, 1 + f, 6 + 3 * f, 7 + 3 * f, 8 + 3 * f) for f, finger in enumerate(FINGERS)
}
# (parent, child) pairs: 5 wrist-to-MCP bones, then 3 bones per finger.
BONES: tuple[tuple[int, int], ...] = tuple(
    (chain[k], chain[k + 1]) for k in range(4) for chain in FINGER_CHAINS.values()
)
PARENT: tuple[int, ...] = (-1,) + tuple(
    parent for child in range(1, NUM_JOINTS) for parent, c in BONES if c == child
)
TIPS: tuple[int, ...] = tuple(chain[-1] for chain in FINGER_CHAINS.values())
CENTRE_JOINT = JOINT_INDEX["MMCP"]  # the hand centre used by the original (and by DeepPrior++ on FPHA)

ACTIONS: tuple[str, ...] = (
    "open_juice_bottle", "close_juice_bottle", "pour_juice_bottle",
    "open_peanut_butter", "close_peanut_butter", "prick", "sprinkle",
    "scoop_spoon", "put_sugar", "stir", "open_milk", "close_milk", "pour_milk",
    "drink_mug", "put_tea_bag", "put_salt", "open_liquid_soap",
    "close_liquid_soap", "pour_liquid_soap", "wash_sponge", "flip_sponge",
    "scratch_sponge", "squeeze_sponge", "open_soda_can", "use_flash", "write",
    "tear_paper", "squeeze_paper", "open_letter", "take_letter_from_enveloppe",
    "read_letter", "flip_pages", "use_calculator", "light_candle",
    "charge_cell_phone", "unfold_glasses", "clean_glasses", "open_wallet",
    "give_coin", "receive_coin", "give_card", "pour_wine", "toast_wine",
    "handshake", "high_five",
)
NUM_ACTIONS = len(ACTIONS)  # 45
ACTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(ACTIONS)}


def finger_of(joint: int) -> str | None:
    """The finger a joint belongs to, or None for the wrist."""
    for finger, chain in FINGER_CHAINS.items():
        if joint in chain[1:]:
            return finger
    return None


assert NUM_JOINTS == 21 and NUM_ACTIONS == 45 and len(BONES) == 20
