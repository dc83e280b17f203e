"""Prompt templates for the zero-shot labeller: one hand-written prompt, or the mean over a named set."""

from __future__ import annotations

from collections.abc import Sequence

from dapl.toy.captions import CAPTION_STYLES

# CLIP's ImageNet prompt ensemble (Radford et al. 2021, the published notebook's 80 templates).
CLIP_IMAGENET_80: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)
# The 7-template subset the CLIP authors selected on ImageNet.
CLIP_IMAGENET_7: tuple[str, ...] = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.", "a {} in a video game.",
    "art of the {}.", "a photo of the small {}.",
)
# The toy CLIP's own phrasings: every caption template of its pretraining corpus (dapl/toy/captions.py).
TOY_CAPTIONS: tuple[str, ...] = tuple(t.replace("{c}", "{}") for style in CAPTION_STYLES.values() for t in style)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "clip-imagenet-80": CLIP_IMAGENET_80, "clip-imagenet-7": CLIP_IMAGENET_7, "toy-captions": TOY_CAPTIONS,
}


def resolve_templates(template: str, templates: str | Sequence[str] | None) -> list[str]:
    """The labeller's templates: ``templates`` (a set's name or a list), else the single ``template``."""
    if templates is None:
        return [template]
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"pseudo.templates={templates!r} is not a template set; known: "
                             f"{', '.join(TEMPLATE_SETS)} (or give a list of templates with '{{}}')")
        return list(TEMPLATE_SETS[templates])
    return list(templates)
