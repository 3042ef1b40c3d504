"""Move rows (`planner.moves`): the rule of a move, the rows training writes, decoding that writes the same rows
and draws the words from the move words' own logits, the `--move-rows` training stage, and bad configs refused."""

from __future__ import annotations

import pytest
import torch
from test_planner import randomize, tiny_model

from planx_core.planner.model import SemanticPlanner
from planx_core.planner.moves import MOVE_WORDS, MOVES, MoveRows, bound_cells, code_moves, step_move
from planx_core.planner.prompt import plan_ids
from planx_core.planner.vocab import build_word_tokenizer, extend_vocabulary, scale_index

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "a red blue circle square moves then left right up down still behind".split()
IGNORE = -100
ARGS = dict(num_keyframes=3, fps=4.0, keyframe_rate=2.0, grid=(3, 3))
# three keyframes of a 3x3 grid, background 0: code 2 goes right then down, code 3 stays, code 5 leaves
PLAN = torch.tensor([[2, 0, 0, 0, 0, 5, 0, 0, 3], [0, 2, 0, 0, 0, 0, 0, 0, 3], [0, 0, 0, 0, 2, 0, 0, 0, 3]])


def build(move_rows: dict | None = None, words=WORDS) -> SemanticPlanner:
    tokenizer = build_word_tokenizer(words)
    model = tiny_model(len(tokenizer))
    vocab = extend_vocabulary(model, tokenizer, 8)
    randomize(model)
    model.config.move_rows = move_rows
    return SemanticPlanner(model, tokenizer, vocab, "tiny")


ROWS = {"background": 0, "slots": 3, "words": list(MOVE_WORDS)}


def test_the_rule_of_a_move_and_the_rows_training_writes():
    assert code_moves(PLAN, 3, 0) == {2: ["right", "down"], 3: ["still", "still"], 5: ["gone", "gone"]}
    assert step_move(PLAN[0], PLAN[2], 2, 3) == "right", "the larger axis of a diagonal step"
    planner = build(ROWS)
    rows, start = planner.moves, planner.vocab.image_start
    word = {m: planner.tokenizer(w, add_special_tokens=False)["input_ids"][0] for m, w in zip(MOVES, MOVE_WORDS)}
    truth = rows.truth(PLAN, start, 3, IGNORE)
    assert truth[0] == ([], [])
    assert truth[1] == (
        [start + 2, word["right"], start + 3, word["still"], start + 5, word["gone"]],
        [IGNORE, word["right"], IGNORE, word["still"], IGNORE, word["gone"]],
    )
    assert truth[2][0][1::2] == [word["down"], word["still"], word["gone"]]
    pad = planner.tokenizer.pad_token_id
    wide = MoveRows(0, 4, rows.word_ids, pad).truth(PLAN, start, 3, IGNORE)[1]  # one slot to spare: pads first
    assert wide == ([pad, pad, *truth[1][0]], [IGNORE, IGNORE, *truth[1][1]])
    narrow = MoveRows(0, 2, rows.word_ids, pad).truth(PLAN, start, 3, IGNORE)[1]  # the first two codes only
    assert narrow == (truth[1][0][:4], truth[1][1][:4])
    ids, labels = plan_ids(planner.vocab, PLAN, scale_index((3, 3)), [], IGNORE, truth)
    block = planner.vocab.block(PLAN[1].tolist(), scale_index((3, 3)))
    after_first = len(planner.vocab.block(PLAN[0].tolist(), scale_index((3, 3))))
    assert ids[after_first : after_first + 6 + len(block)] == truth[1][0] + block, "the row sits before its block"
    assert labels[after_first : after_first + 6] == truth[1][1]


def fed_ids(planner):
    fed = []
    hook = planner.model.get_input_embeddings().register_forward_pre_hook(lambda m, a: fed.extend(a[0][0].tolist()))
    return fed, hook


@pytest.mark.parametrize("slice_head, slots, temperature", [(True, 3, 0.0), (False, 4, 1.0)])
def test_decoding_writes_the_rows_and_draws_the_words_from_their_logits(slice_head, slots, temperature):
    """Keyframes 0 and 1 locked: keyframe 1's row is written from its given cells (as training writes it), keyframe
    2's words are the likeliest of the move words' logits at any temperature (the argmax of those rows of a full
    uncached forward), after the pads that give every row one length."""
    planner = build({**ROWS, "slots": slots})
    planner = SemanticPlanner(planner.model, planner.tokenizer, planner.vocab, "tiny", slice_head=slice_head)
    prompt = planner.build_prompt("a red circle", "moves right", **ARGS)
    fed, hook = fed_ids(planner)
    try:
        plan = planner.generate(
            "a red circle", "moves right", temperature=temperature, locked={0: PLAN[0], 1: PLAN[1]}, **ARGS
        )
    finally:
        hook.remove()
    assert torch.equal(plan[:2], PLAN[:2])
    v, scale = planner.vocab, scale_index((3, 3))
    truth = planner.moves.truth(PLAN, v.image_start, 3, IGNORE)
    written = prompt + plan_ids(v, PLAN[:2], scale, [], IGNORE, truth[:2])[0]
    assert fed[: len(written)] == written
    pads = 2 * (slots - 3)
    assert fed[len(written) : len(written) + pads] == [planner.tokenizer.pad_token_id] * pads
    written, row = written + fed[len(written) : len(written) + pads], fed[len(written) + pads : len(written) + pads + 6]
    assert row[0::2] == [v.image_start + c for c in (2, 3, 5)], "each object of keyframe 0, in code order"
    for i, word in enumerate(row[1::2]):
        with torch.no_grad():
            logits = planner.model(torch.tensor([written + row[: 2 * i + 1]])).logits[0, -1]  # [V]
        words = list(planner.moves.word_ids)
        assert word == words[int(logits[words].argmax())]
    assert fed[len(written) + 6 : len(written) + 8] == [v.im_start, v.scales[scale]]


def test_sampled_plans_follow_the_grammar_with_rows():
    planner = build(ROWS)
    for seed in range(3):
        plan = planner.generate("a red circle", "moves left, then up", seed=seed, **ARGS)
        assert plan.shape == (3, 9) and 0 <= int(plan.min()) and int(plan.max()) < 8
    assert build(None).moves is None, "a planner without move_rows writes none"


@pytest.mark.parametrize(
    "value, match",
    [
        ({**ROWS, "background": 8}, "move_rows"),
        ({**ROWS, "words": ["left"]}, "move_rows"),
        ([0], "move_rows"),
        ({**ROWS, "background": True}, "move_rows"),
        ({**ROWS, "slots": 0}, "move_rows"),
        ({"background": 0, "words": list(MOVE_WORDS)}, "slots"),
    ],
)
def test_bad_move_rows_are_refused(value, match):
    with pytest.raises(ValueError, match=match):
        build(value)


def test_a_tokenizer_without_a_move_word_is_refused():
    with pytest.raises(ValueError, match="behind"):
        MoveRows.for_tokenizer(build_word_tokenizer([w for w in WORDS if w != "behind"]), 0)


def test_move_rows_stage_writes_the_truths_rows_and_weighs_their_words():
    """train --move-rows W: every sequence carries each keyframe's move row (the truth's words as labels, weight W),
    the exported config records move_rows, the fingerprint holds W, and W below 0 is refused."""
    from planx_core import world
    from planx_core.training import main as train
    from planx_core.training.planner import PlannerStage
    from planx_core.training.stages import StageContext
    from planx_core.world.labels import BACKGROUND_CODE

    args = train.parse_args(["--stage", "planner", "--out", "unused", "--steps", "1", "--batch", "2"])
    args.move_rows = 7.0
    stage = PlannerStage(StageContext(args, "cpu"))
    batch, seeds = stage.batch(0)
    codes = stage.plan_codes([world.make_clip(s) for s in seeds])  # [B, K, g*g]
    words = torch.tensor(stage.moves.word_ids)
    for b in range(2):
        said = torch.isin(batch["labels"][b], words)  # [S]
        wanted = [
            stage.moves.word_id(m) for step in zip(*code_moves(codes[b], 9, BACKGROUND_CODE).values()) for m in step
        ]
        assert batch["labels"][b, said].tolist() == wanted
        assert bool((batch["weights"][b, said] == 7.0).all())
    stage.module(**batch).backward()
    assert stage.model.config.move_rows == {"background": BACKGROUND_CODE, "slots": 3, "words": list(MOVE_WORDS)}
    assert stage.fingerprint()["move_rows"] == 7.0
    args.move_rows = -1.0
    with pytest.raises(train.StageError, match="--move-rows"):
        PlannerStage.check_args(args, 1)


def test_blind_cues_blank_the_cues_and_give_the_words_unscored():
    """train --blind-cues P: a blind row reads blank cues (pads only) and the move words as given inputs with no
    label, the rest of the plan as in a seeing row; refused without move rows and cues."""
    from planx_core import world
    from planx_core.training import main as train
    from planx_core.training.planner import PlannerStage
    from planx_core.training.stages import StageContext

    argv = ["--stage", "planner", "--out", "unused", "--steps", "1", "--batch", "2", "--keyframe-cues", "24"]
    args = train.parse_args([*argv, "--cues-only", "--move-rows", "10", "--blind-cues", "0.5"])
    stage = PlannerStage(StageContext(args, "cpu"))
    clip = world.make_clip(3)
    codes = stage.plan_codes([clip])[0]  # [K, g*g]
    (seen, seen_labels), (blind, blind_labels) = (stage.sequence(clip, codes, True, b) for b in (False, True))
    assert len(seen) == len(blind)
    words = set(stage.moves.word_ids)
    differ = [i for i, (x, y) in enumerate(zip(seen, blind)) if x != y]
    assert differ and all(blind[i] == stage.tokenizer.pad_token_id for i in differ), "only the cues go blank"
    said = [i for i, label in enumerate(seen_labels) if label in words]
    assert said and all(blind_labels[i] == -100 and blind[i] == seen[i] for i in said), "words given, unscored"
    rest = [i for i in range(len(seen)) if i not in said]
    assert [seen_labels[i] for i in rest] == [blind_labels[i] for i in rest]
    assert stage.fingerprint()["blind_cues"] == 0.5
    with pytest.raises(train.StageError, match="--move-rows"):
        PlannerStage.check_args(train.parse_args([*argv, "--blind-cues", "0.5"]), 1)


def every_word(monkeypatch, word: str):
    """A decoder whose every drawn move word is `word` and every cell the model's own greedy code: plan(first,
    **grammar options) decodes 3 keyframes of a 3x3 grid after keyframe 0 `first` `[9]`."""
    from planx_core.planner import decode as decoding

    planner = build(ROWS)
    draw = decoding.choose

    def words(logits, sampling, generator):
        return MOVES.index(word) if logits.numel() == len(MOVES) else draw(logits, sampling, generator)

    monkeypatch.setattr(decoding, "choose", words)
    scale = planner.vocab.scales[scale_index((3, 3))]
    prompt = planner.build_prompt("a red circle", "moves right", **ARGS)

    def plan(first: torch.Tensor, **options) -> torch.Tensor:
        locked = {0: first.tolist()}
        grammar = decoding.Grammar(3, 9, scale, locked, [], planner.moves, 3, greedy_words=False, **options)
        streams = [decoding.Stream(planner.head, prompt, planner.device)]
        with torch.inference_mode():
            return decoding.decode(streams, planner.vocab, grammar, decoding.Sampling(0.0), torch.Generator())[0]

    return plan


def test_a_still_word_binds_its_objects_cells(monkeypatch):
    """When the drawn word of an object is "still", keyframe k copies that object's cells from keyframe k-1 and
    draws its code nowhere else (`Grammar.keep_still`); without the binding the same draws move it."""
    plan = every_word(monkeypatch, "still")
    bound, loose = plan(PLAN[0], keep_still=True), plan(PLAN[0], keep_still=False)
    for code in (2, 3, 5):
        assert torch.equal(bound[1] == code, PLAN[0] == code) and torch.equal(bound[2] == code, PLAN[0] == code)
    assert torch.equal(loose[0], bound[0]) and not torch.equal(loose, bound), "this planner's own cells move them"


def test_bound_words_place_cells_where_the_word_says():
    """`bound_cells`: a bound word moves its code's cells one cell its way (off-grid cells drop, an earlier code
    keeps a contested cell), and `step_move` reads the placed cells as that word."""
    before = torch.tensor([2, 2, 0, 0, 0, 0, 3, 0, 0])  # [9]: a 3x3 grid, code 2 at the top left, code 3 below
    fixed = bound_cells(before, {2: "right", 3: "still"}, 3)
    assert fixed == {1: 2, 2: 2, 6: 3}
    after = torch.zeros_like(before)  # [9]
    for cell, code in fixed.items():
        after[cell] = code
    assert step_move(before, after, 2, 3) == "right" and step_move(before, after, 3, 3) == "still"
    assert bound_cells(before, {2: "up"}, 3) == {}, "pushed off the grid: no cell left"
    assert bound_cells(before, {3: "up", 2: "down"}, 3) == {3: 3, 4: 2}, "code 3 came first and keeps cell 3"


def test_a_move_word_binds_its_objects_cells_with_bind_moves(monkeypatch):
    """With `Grammar.bind_moves` (the default), a drawn "right" places the object's cells one cell right of keyframe
    k-1's and its code nowhere else; off, the same draws leave the cells to the model."""
    plan = every_word(monkeypatch, "right")
    first = torch.tensor([2, 0, 0, 3, 0, 0, 0, 0, 0])  # [9]: codes 2 and 3 in the left column
    bound, loose = plan(first), plan(first, bind_moves=False)
    for k, column in ((1, 1), (2, 2)):
        assert torch.nonzero(bound[k] == 2).flatten().tolist() == [column]
        assert torch.nonzero(bound[k] == 3).flatten().tolist() == [3 + column]
    assert code_moves(bound, 3, 0) == {2: ["right", "right"], 3: ["right", "right"]}
    assert not torch.equal(loose, bound), "this planner's own cells go elsewhere"


def test_the_planner_stage_scores_teacher_forced_move_words():
    """The planner stage's evaluation reports the share of move words right under teacher forcing (the likeliest of
    the six words, as the runtime writes them), over all clips and over clips of two or more objects; none without
    move rows."""
    from planx_core.training import main as train
    from planx_core.training.planner import PlannerStage
    from planx_core.training.stages import StageContext

    argv = ["--stage", "planner", "--out", "unused", "--steps", "1", "--batch", "2", "--eval-clips", "6"]
    stage = PlannerStage(StageContext(train.parse_args([*argv, "--eval-decode", "0", "--move-rows", "10"]), "cpu"))
    ids = torch.tensor(stage.moves.word_ids)
    targets = torch.tensor([[5, ids[0], 7, ids[4], ids[2]], [ids[1], 5, 5, 5, 5]])  # [2, 5]: 3 words, then 1
    logits = torch.zeros(2, 5, len(stage.tokenizer))  # [2, 5, V]
    logits[0, 1, ids[0]] = logits[0, 3, ids[1]] = logits[0, 4, ids[2]] = logits[1, 0, ids[1]] = 1.0
    logits[0, 0, ids[3]] = 5.0  # a word's logit where no word is due is not scored
    assert stage._word_hits(logits, targets).tolist() == [[2, 3], [1, 1]]
    clips = stage._eval_sets()["train"][0]
    hits = torch.tensor([[2, 3], [1, 1]] + [[0, 2]] * (len(clips) - 2))  # [B, 2]
    several = [i for i, c in enumerate(clips) if len(c.objects) > 1]
    scores = stage._word_scores(hits, clips, "x")
    assert scores["x_words"] == round(3 / (4 + 2 * (len(clips) - 2)), 4)
    assert ("x_words_2obj" in scores) == bool(several)
    out = stage.evaluate()
    for key in ("tf_i2v_words", "heldout_tf_i2v_words"):
        assert 0.0 <= out[key] <= 1.0
    plain = PlannerStage(StageContext(train.parse_args([*argv, "--eval-decode", "0"]), "cpu"))
    assert not [k for k in plain.evaluate() if k.endswith(("_words", "_words_2obj"))]
