"""A tokenizer for a chain's alphabet: token id i is the string "i" (0 .. d_vocab - 1), plus an
end token "<end>" (id d_vocab, outside the model's vocabulary: a Markov chain never ends, so a
model never emits it; it pads batches of unequal length and is the eos TransformerLens asks for).

It is a ``transformers.PreTrainedTokenizerFast`` (transformers comes with TransformerLens), so
everything TransformerLens calls on ``model.tokenizer`` works: ``to_tokens``, ``to_str_tokens``,
``detect_head``, circuitsvis labels and the bridge's ``generate``. Text is the token ids
separated by white space ("0 1 1 0"); with at most 10 states the white space may be left out
("0110"). Any other character is a ValueError naming it and the alphabet.
"""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizerFast

END = "<end>"


def _pattern(d_vocab: int) -> str:
    """One token: a single digit when every id is one (d_vocab <= 10), else a run of digits."""
    return r"<end>|\d" if d_vocab <= 10 else r"<end>|\d+"


class ChainTokenizer(PreTrainedTokenizerFast):
    """Word-level tokenizer of the alphabet "0" .. str(d_vocab - 1) and "<end>" (module doc)."""

    def __init__(self, d_vocab: int, **kwargs) -> None:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        if isinstance(d_vocab, bool) or not isinstance(d_vocab, int) or d_vocab < 1:
            raise ValueError(f"d_vocab must be an integer >= 1, got {d_vocab!r}")
        vocab = {str(i): i for i in range(d_vocab)} | {END: d_vocab}
        core = Tokenizer(models.WordLevel(vocab, unk_token=None))
        core.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Split(Regex(_pattern(d_vocab)), behavior="isolated"),
            ]
        )
        core.decoder = decoders.Fuse() if d_vocab <= 10 else None
        kwargs.setdefault("eos_token", END)
        kwargs.setdefault("pad_token", END)
        super().__init__(tokenizer_object=core, **kwargs)
        self.d_vocab = d_vocab
        self._token = re.compile(rf"\s*(?:{_pattern(d_vocab)})\s*")

    def check_text(self, text: str) -> None:
        """ValueError naming the first piece of `text` that is no token of the alphabet."""
        pos = 0
        while pos < len(text):
            m = self._token.match(text, pos)
            ok = m is not None and (m.group().strip() == END or int(m.group()) < self.d_vocab)
            if not ok:
                piece = re.match(rf"\s*({_pattern(self.d_vocab)}|\S+)", text[pos:]).group(1)
                raise ValueError(
                    f"{piece!r} in {text[:40]!r} is not a token: the alphabet is "
                    f"0..{self.d_vocab - 1} (and {END})"
                )
            pos = m.end()

    def __call__(self, text=None, *args, **kwargs):
        for item in [text] if isinstance(text, str) else text or []:
            if isinstance(item, str):
                self.check_text(item)
        return super().__call__(text, *args, **kwargs)
