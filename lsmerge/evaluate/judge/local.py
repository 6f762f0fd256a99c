"""`LocalJudge`: a transformers causal LM as judge, by the log-probabilities of the verdict tokens."""

from __future__ import annotations

import torch

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.judge.responses import Ask
from lsmerge.evaluate.judge.verdicts import Judge, Verdict, judge_text


class LocalJudge(Judge):
    """A causal LM as judge: the verdict whose token is likelier next after the judging prompt.

    The judging prompt is wrapped in the tokenizer's chat template (as a user turn, with the
    generation prompt) when it has one and `chat_template` is on; otherwise it is plain text
    ending in "Answer:" and the verdict tokens carry a leading space. The scores are the
    log-probabilities of the first token of each label ("A", "B"); if they differ by at most
    `tie_margin` nats the verdict is a tie. Prompts are right-padded in batches of `batch_size`
    and read at their last real position, so batching does not change the verdicts.

    What it assumes of the model, checked with SmolLM2-135M-Instruct and Gemma-3-270M (tests: tiny
    Llama and tiny Gemma-3 with their kinds of template): the chat template takes a lone user turn
    (Gemma's has no system role; none is sent); a tokenizer that puts a BOS token before plain text
    (Gemma's) gets exactly one BOS before the chat prompt too, whether the template writes it
    (Gemma: `{{ bos_token }}`) or not; each label's first token is in the vocabulary ("A" / "B" after
    a chat template, " A" / " B" after "Answer:"). A checkpoint converted from GGUF may carry no chat
    template: it is then judged on the plain-text prompt.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 4, tie_margin: float = 0.0, chat_template: bool = True,
                 labels: tuple[str, str] = ("A", "B"), name: str = "local"):  # fmt: skip
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.tie_margin, self.name = batch_size, tie_margin, name
        self.use_chat = bool(chat_template and getattr(tokenizer, "chat_template", None))
        plain = tokenizer("x", add_special_tokens=True)["input_ids"]
        bos = tokenizer.bos_token_id
        self.bos_id = bos if bos is not None and plain and plain[0] == bos else None  # the tokenizer adds a BOS
        prefix = "" if self.use_chat else " "
        self.label_ids = []
        for label in labels:
            ids = tokenizer.encode(prefix + label, add_special_tokens=False)
            if not ids:
                raise LsMergeError(f"the judge's tokenizer gives no token for the verdict {label!r}; use another judge model.")
            self.label_ids.append(ids[0])
        if len(set(self.label_ids)) < len(self.label_ids) or tokenizer.unk_token_id in self.label_ids:
            raise LsMergeError(
                f"the judge's tokenizer cannot tell the verdicts {labels} apart by their first token "
                f"(ids {self.label_ids}); use a judge model whose vocabulary has them."
            )

    def encode(self, ask: Ask) -> list[int]:
        """Token ids of the judging prompt for one ask, ending right before the verdict."""
        text = judge_text(ask)
        if self.use_chat:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            ids = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
            return ids if self.bos_id is None or ids[:1] == [self.bos_id] else [self.bos_id, *ids]
        return self.tokenizer(f"{text}\nAnswer:", add_special_tokens=True)["input_ids"]

    @torch.inference_mode()
    def verdict_logprobs(self, asks: list[Ask]) -> torch.Tensor:
        """(n, 2) float32 log-probabilities of the first and second label as the next token."""
        device = next(self.model.parameters()).device
        encoded = [self.encode(a) for a in asks]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            lengths = torch.tensor([len(ids) for ids in batch])
            input_ids = torch.full((len(batch), int(lengths.max())), pad_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for i, ids in enumerate(batch):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                attention_mask[i, : len(ids)] = 1
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            last = logits[torch.arange(len(batch), device=device), (lengths - 1).to(device)].float()  # (b, vocab)
            out.append(torch.log_softmax(last, dim=-1)[:, self.label_ids].cpu())
        return torch.cat(out)

    def judge(self, asks: list[Ask]) -> list[Verdict]:
        verdicts = []
        for lp_first, lp_second in self.verdict_logprobs(asks).tolist():
            margin = lp_first - lp_second
            choice = "first" if margin > self.tie_margin else "second" if margin < -self.tie_margin else "tie"
            verdicts.append(Verdict(choice, {"logprob_first": lp_first, "logprob_second": lp_second}))
        return verdicts
