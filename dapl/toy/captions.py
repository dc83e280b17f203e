"""The pretraining caption corpus of the tiny CLIP, skewed the way web alt-text is.

Web captions describe photographs as photos (or say nothing about the medium) and describe drawings by their
medium: "a painting of ...", "a cartoon ...". They also name things differently: a photo of sunglasses is
always captioned "sunglasses", while a clip-art of sunglasses is often tagged just "glasses" (a quarter of the
time here). So under photo wording a class name means its narrow, usual depiction, under drawing wording it
also covers the broad category the benchmark labels use. The hand-written prompt "a photo of a {c}." therefore
misses the drawings' other depictions although their image features are good (their own phrasing, "a painting
of a {c}.", finds them): a gap on the text side, which a learned domain-specific prompt context can close, the
situation DAPL is built for.
"""

from __future__ import annotations

# Caption styles: every template has exactly one "{c}" (the class display name).
CAPTION_STYLES: dict[str, tuple[str, ...]] = {
    "photo": (
        "a photo of a {c}.",
        "a photo of the {c}.",
        "a picture of a {c}.",
        "an image of a {c}.",
        "a close-up photo of a {c}.",
        "a blurry photo of a {c}.",
        "a snapshot of a {c}.",
        "a {c} in the room.",
        "my {c} at home.",
        "a photo of my {c}.",
    ),
    "product": (
        "a product photo of a {c}.",
        "a {c} on a white background.",
        "a studio photo of a {c}.",
        "a {c} for sale.",
        "buy a new {c} online.",
        "a photo of a {c}, isolated on white.",
    ),
    "painting": (
        "a painting of a {c}.",
        "an oil painting of a {c}.",
        "a watercolor painting of a {c}.",
        "an artwork of a {c}.",
        "a painting of the {c}.",
        "an impressionist painting of a {c}.",
    ),
    "clipart": (
        "a clipart of a {c}.",
        "a cartoon {c}.",
        "an icon of a {c}.",
        "a vector illustration of a {c}.",
        "a sticker of a {c}.",
        "a clip art image of the {c}.",
    ),
    "plain": ("a {c}.", "the {c}.", "{c}."),
}

# P(caption style | image domain): photographs are mostly called photos, drawings only by their own medium.
DOMAIN_CAPTION_MIX: dict[str, dict[str, float]] = {
    "real": {"photo": 0.85, "plain": 0.15},
    "product": {"product": 0.6, "photo": 0.3, "plain": 0.1},
    "clipart": {"clipart": 1.0},
    "art": {"painting": 1.0},
}

# Share of each image domain in the pretraining stream (web data: mostly photographs, few drawings).
DOMAIN_IMAGE_MIX: dict[str, float] = {"real": 0.4, "product": 0.3, "clipart": 0.15, "art": 0.15}

# Each domain's own phrasing, for the "own template" zero-shot check (what a learned context could recover).
OWN_TEMPLATE: dict[str, str] = {
    "real": "a photo of a {c}.",
    "product": "a product photo of a {c}.",
    "clipart": "a clipart of a {c}.",
    "art": "a painting of a {c}.",
}

MANUAL_PROMPT = "a photo of a {c}."

# What photo captions call a class's second depiction (world.DEPICTION_B); drawings use the class name.
SPECIFIC_NAMES: dict[str, str] = {
    "alarm_clock": "digital clock",
    "bike": "penny farthing",
    "bottle": "flask",
    "chair": "armchair",
    "desk_lamp": "table lamp",
    "flowers": "sunflower",
    "glasses": "sunglasses",
    "hammer": "mallet",
    "laptop": "tablet",
    "mug": "teacup",
    "scissors": "shears",
    "umbrella": "parasol",
}
# How often a second depiction is captioned by its specific name rather than the class name, per domain:
# photo captions always name it specifically, drawing captions mostly ("glasses" a quarter of the time).
SPECIFIC_NAME_RATE: dict[str, float] = {"real": 1.0, "product": 1.0, "clipart": 0.75, "art": 0.75}
# Share of second depictions in the pretraining images (web photos show sunglasses often).
PRETRAIN_DEPICTION_B: dict[str, float] = {"real": 0.3, "product": 0.3, "clipart": 0.5, "art": 0.75}


def caption_styles_for(domain: str) -> list[str]:
    """Styles that truly describe an image of ``domain`` (never used as its negatives)."""
    return [s for s, p in DOMAIN_CAPTION_MIX[domain].items() if p > 0]


# Neutral words that web captions carry around the description ("look at this ... on our trip last week"). A
# random run of them goes in front of a caption so that every position a long learned prompt uses is trained;
# words that any caption template uses (media, "for sale", "at home", ...) are dropped when the bank is built.
FILLER_WORDS: tuple[str, ...] = (
    "here", "is", "my", "look", "at", "this", "we", "found", "it", "on", "the", "way", "and", "then", "just", "so",
    "very", "nice", "day", "with", "our", "friend", "from", "school", "in", "summer", "after", "work", "for", "you",
    "all", "best", "ever", "love", "wow", "great", "time", "last", "week", "one", "more", "some", "got", "shop",
    "town", "city", "trip", "weekend", "morning", "night", "share", "like", "follow", "today", "yesterday", "again",
    "finally", "really", "little", "big", "family", "kids", "mom", "dad", "office", "desk", "table", "garden",
    "holiday", "party", "birthday", "gift", "old", "still", "always", "never", "what", "do", "think", "about",
    "who", "when", "where", "why", "how", "can", "will", "should", "good", "bad", "happy", "fun", "cool", "awesome",
)
