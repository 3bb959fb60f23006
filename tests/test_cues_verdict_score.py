"""cues.verdict_score: verdict words decided from next-token margins (``--verdicts scored``).

The margins are checked against a plain full forward of a tiny random Llama (built from a
config), the decision and its calibration on hand-set margins, and the cue source's memo key,
fingerprint and failed rows with a fake backend."""
import copy
import re
import tempfile

import pytest
import torch

from cues.generation import use_gqa_sdpa
from cues.memo import Memo
from cues.normalize import Vocabulary
from cues.sources import LLMCues
from cues.templates import load_template
from cues.verdict_score import (VerdictScoring, next_token_margins, score_answers, scored_items, scoring_rows,
                                verdict_spans, verdict_token_ids)
from tests.dummies_cues import FakeLLM

VOCAB = 128
ANSWER = '{"reasoning": "piano: hands on the keys, sounds; phone: screen on, silent"}'


class WordTokens:
    """A toy tokenizer: one id per whitespace-led word or punctuation mark, ids in ``[3, VOCAB)``."""

    def __init__(self):
        self.ids: dict[str, int] = {}

    def __call__(self, text: str) -> list[int]:
        out = []
        for piece in re.findall(r"\s?\w+|\s?[^\w\s]", text):
            if piece not in self.ids:
                self.ids[piece] = 3 + len(self.ids) % (VOCAB - 3)
            out.append(self.ids[piece])
        return out


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="sdpa")
    plain = LlamaForCausalLM(cfg).eval()
    ours = LlamaForCausalLM(copy.deepcopy(cfg)).eval()
    ours.load_state_dict(plain.state_dict())
    use_gqa_sdpa(ours)  # the shared prefix attended in place, as the transformers backend does
    return plain, ours


def reference_margin(model, ids: list[int], at: int, a: int, b: int) -> float:
    with torch.inference_mode():
        logp = model(input_ids=torch.tensor([ids])).logits[0, at].float().log_softmax(-1)
    return float(logp[a] - logp[b])


def test_spans_and_rows_read_before_each_verdict_word():
    enc = WordTokens()
    spans = verdict_spans(ANSWER)
    assert [s[0] for s in spans] == ["piano", "phone"] and spans[1][1] == "phone: screen on,"
    assert [ANSWER[s[2]:s[2] + 7] for s in spans] == [" sounds", " silent"]
    prompt = enc("Description: a piano and a phone")
    rows = scoring_rows(prompt, ANSWER, spans, enc)
    # in place: the answer's own tokens, read where the verdict word comes next
    ids, reads = rows[0]
    full = prompt + enc(ANSWER)
    assert ids == full[:len(ids)] and [full[r + 1] for r in reads] == [enc(" sounds")[0], enc(" silent")[0]]
    # free: the first verdict's free row is its in-place one (skipped); the second reads as a first verdict
    assert len(rows) == 2 and rows[1][0] == prompt + enc('{"reasoning": "phone: screen on,')
    assert verdict_spans('{"reasoning": "nothing here"}') is None and verdict_spans("no json") is None


def test_margins_equal_a_plain_forward_and_do_not_depend_on_the_batch(tiny):
    plain, ours = tiny
    enc = WordTokens()
    a, b = verdict_token_ids(enc)
    shared = enc("You find the sounding objects of a frame. Example answers follow.")
    answers = [ANSWER, '{"reasoning": "dog: asleep, silent; bell: swinging, sounds; man: talking, sounds"}']
    prompts = [shared + enc("Description: a piano and a phone"), shared + enc("Description: a dog, a bell, a man")]
    rows = [r for p, ans in zip(prompts, answers) for r in scoring_rows(p, ans, verdict_spans(ans), enc)]
    assert len(rows) == 1 + 1 + 1 + 2
    want = [[reference_margin(plain, ids, at, a, b) for at in reads] for ids, reads in rows]
    for model in (plain, ours):  # computed whole, and with the shared beginning attended in place
        for batch_size in (1, 2, 16):
            got = next_token_margins(model, rows, a, b, batch_size=batch_size)
            assert [len(g) for g in got] == [len(w) for w in want]
            assert torch.allclose(torch.tensor(sum(got, [])), torch.tensor(sum(want, [])), atol=1e-4)
    per_answer = score_answers(ours, enc, prompts + [shared], answers + ["nothing useful"], batch_size=3)
    assert per_answer[2] is None  # no verdict: nothing scored
    first = per_answer[0]
    assert first[0][0] == pytest.approx(first[0][1])  # the first verdict's free margin is its in-place one
    assert [m[1] for m in per_answer[1]] == pytest.approx(want[2], abs=1e-4)
    assert [m[0] for m in per_answer[1]] == pytest.approx([want[2][0], *sum(want[3:], [])], abs=1e-4)


def test_the_rule_and_its_calibration():
    rule = VerdictScoring(weight=1.0, threshold=1.5)
    # the "phone: screen on" case: judged "silent" in place (-1) but "sounds" as a first verdict (+3)
    assert rule.sounds(3.0, -1.0) and not rule.sounds(2.4, -1.0) and not rule.sounds(1.5, 0.0)
    assert VerdictScoring(weight=0.0, threshold=0.0).sounds(9.0, -0.1) is False  # in place only: the greedy word
    assert VerdictScoring(weight=2.0, threshold=1.0).sounds(1.0, -0.9)  # 2*1 - 0.9 > 1
    margins = [[6.7, 6.7], [4.9, -3.3]]
    assert scored_items(ANSWER, margins, rule) == ["piano", "phone"]
    assert scored_items(ANSWER, margins, VerdictScoring(threshold=2.0)) == ["piano"]
    assert scored_items(ANSWER, [[6.7, 6.7]], rule) is None  # margins that do not fit the answer: not used
    assert scored_items("nothing useful", margins, rule) is None
    with pytest.raises(ValueError, match="same token"):
        verdict_token_ids(lambda s: [7, 8])


class ScoringLLM(FakeLLM):
    """A fake backend that also gives margins: "phone" scores "sounds" as a first verdict."""

    def __init__(self, answer):
        super().__init__(answer)
        self.scored = 0

    def score_verdicts(self, conversations, raw_outputs):
        self.scored += len(raw_outputs)
        out = []
        for raw in raw_outputs:
            spans = verdict_spans(raw)
            out.append([(3.0, -1.0) if name == "phone" else (0.5, 0.5) if name == "dog" else (6.0, 6.0)
                        for name, _, _ in spans] if spans else None)
        return out


def _answer(text: str) -> str:
    if "phone" in text:
        return ANSWER
    if "dog" in text:
        return '{"reasoning": "dog: asleep, sounds"}'
    return "nothing useful"


def test_scored_source_cues_key_fingerprint_and_failed_rows():
    vocab = Vocabulary.for_categories(["piano", "phone", "dog", "man"])
    t = load_template("cot-v3")
    memo = Memo(tempfile.mkdtemp())
    greedy = LLMCues(t, ScoringLLM(_answer), vocab, memo, repair=False)
    scored = LLMCues(t, ScoringLLM(_answer), vocab, memo, repair=False, verdicts="scored")
    caps = ["a piano and a phone with its screen on", "a dog asleep", "a man"]
    g, s = greedy.answer(caps), scored.answer(caps)
    assert [a.cues for a in g] == [["piano"], ["dog"], []]
    assert [a.cues for a in s] == [["piano", "phone"], [], []]
    assert [a.parse_status for a in s] == ["ok", "empty", "malformed"]  # the failed row stays failed
    assert scored.backend.scored == 3 and greedy.backend.scored == 0
    # the method is in the memo key and the fingerprint; the rule only in the fingerprint
    assert greedy.key(caps[0]) != scored.key(caps[0]) and greedy.config() != scored.config()
    stricter = LLMCues(t, ScoringLLM(_answer), vocab, memo, repair=False, verdicts="scored",
                       rule=VerdictScoring(threshold=2.0))
    assert stricter.key(caps[0]) == scored.key(caps[0]) and stricter.config() != scored.config()
    assert [a.cues for a in stricter.answer(caps)] == [["piano"], [], []] and stricter.backend.scored == 0  # memo
    # a backend without margins (vllm) keeps the greedy verdicts, and says so in its fingerprint
    fallback = LLMCues(t, FakeLLM(_answer), vocab, Memo(tempfile.mkdtemp()), repair=False, verdicts="scored")
    assert not fallback.scoring and fallback.key(caps[0]) == greedy.key(caps[0])
    assert fallback.config() == LLMCues(t, FakeLLM(_answer), vocab, memo, repair=False).config()
    assert "verdict_rule" not in greedy.config() and scored.config()["verdict_rule"]["method"] == "scored-v1"
    with pytest.raises(ValueError, match="verdicts 'best'"):
        LLMCues(t, FakeLLM(_answer), vocab, memo, verdicts="best")
