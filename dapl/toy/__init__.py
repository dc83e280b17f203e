"""The embedded default: a procedural multi-domain world (``world``) and a tiny CLIP pretrained on it
(``pretrain``).

Importing this package stays light (no torch) so the world generator's worker processes start fast; the
pretraining and evaluation helpers are imported from their modules.
"""

from dapl.toy.world import TOY_CLASSES, TOY_DOMAINS, class_display_name, generate_world, render

__all__ = ["TOY_CLASSES", "TOY_DOMAINS", "class_display_name", "generate_world", "render"]
