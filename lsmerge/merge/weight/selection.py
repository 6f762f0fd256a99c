"""Which tensors a merge touches; everything else is copied from the base bit for bit."""

from __future__ import annotations

from dataclasses import dataclass

from lsmerge.io.archmap import TensorRole

EMBED_KINDS = frozenset({"embed", "pos_embed", "lm_head"})


@dataclass(frozen=True)
class Selection:
    """Merge a tensor when:

    - embeddings / lm_head (`embed`, `pos_embed`, `lm_head`): `embeddings` is True;
    - inside decoder layer L: (`layers` is None or L in `layers`) and (`kinds` is None or its
      kind in `kinds`);
    - other tensors outside the layers (final norm, ...): `layers` is None and (`kinds` is None
      or its kind in `kinds`).
    """

    layers: frozenset[int] | None = None
    kinds: frozenset[str] | None = None
    embeddings: bool = True

    def selects(self, role: TensorRole) -> bool:
        if role.kind in EMBED_KINDS:
            return self.embeddings
        kind_ok = self.kinds is None or role.kind in self.kinds
        if role.layer is None:
            return self.layers is None and kind_ok
        return (self.layers is None or role.layer in self.layers) and kind_ok
