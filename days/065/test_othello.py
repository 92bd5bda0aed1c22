"""The gate of day 65 (ARENA 1.5.3 OthelloGPT: the engine, the games, the model, the linear probes).

References: hand positions whose legal moves and flips are counted by hand; the board's 8 symmetries (the rules
commute with each of them); the square-by-square engine against the bitboard engine on thousands of positions;
scipy's chi-square test for the generator's uniform choice; torch's cross-entropy for the loss; scikit-learn's
multinomial LogisticRegression for the probes; a fast training run that must learn; and the committed model,
re-evaluated. ARENA downloads its model and probe; ours are trained by ``run_experiment`` (the slow test trains
the model again).
"""

import importlib
import json
import math
from collections import Counter
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from checks.committed import Tolerance, assert_reproduces, exact, statistical

from . import othello as O

fixtures = importlib.import_module("days.035.fixtures")
one_thread_module = fixtures.one_thread_module


def board_from(black: list[int], white: list[int]) -> np.ndarray:
    board = np.zeros((8, 8), dtype=np.int8)
    for s in black:
        board[s // 8, s % 8] = O.BLACK
    for s in white:
        board[s // 8, s % 8] = O.WHITE
    return board


@pytest.fixture(scope="module")
def games():
    return O.generate_games(400, 11)


@pytest.fixture(scope="module")
def replay(games):
    return O.replay_games(games)


# ---------------------------------------------------------------- labels and tokens


def test_labels_and_token_encoding():
    """ARENA's encoding: 60 playable squares (the four centre squares 27, 28, 35, 36 are never played) are tokens
    1..60 in square order; to_int and to_string are inverse; to_board_label writes row letter + column digit."""
    assert [O.to_board_label(i) for i in (0, 7, 27, 63)] == ["A0", "A7", "D3", "H7"]
    squares = [s for s in range(64) if s not in (27, 28, 35, 36)]
    assert [O.to_int(s) for s in squares] == list(range(1, 61))
    assert [O.to_string(t) for t in range(1, 61)] == squares
    for bad in (0, 61):
        with pytest.raises(ValueError):
            O.to_string(bad)
    with pytest.raises(ValueError):
        O.to_int(27)


# ---------------------------------------------------------------- the engine on hand positions


def test_start_position():
    """The start: white on D3 (27) and E4 (36), black on D4 (28) and E3 (35), black to move, with exactly four legal
    moves, C3 (19), D2 (26), E5 (37), F4 (44), each flipping the one white stone between it and a black one."""
    s = O.OthelloBoardState()
    assert s.next_hand_color == O.BLACK and (s.state == board_from([28, 35], [27, 36])).all()
    assert s.get_valid_moves() == [19, 26, 37, 44]
    assert [s.flips(m) for m in (19, 26, 37, 44)] == [[27], [27], [36], [36]]
    assert s.get_valid_moves(O.WHITE) == [20, 29, 34, 43]
    with pytest.raises(ValueError):
        s.umpire(0)
    assert s.umpire(19) == [27] and s.next_hand_color == O.WHITE
    assert (s.state == board_from([19, 27, 28, 35], [36])).all()


# Hand positions: (black, white, colour to move, move, the squares it flips, counted by hand).
HAND = [
    # A0 for black: east run B (1, 2) closed by black at 3; the diagonal 9 closed by 18; south 8, 16, 24 reaches
    # the edge of its run at empty 32: not flipped.
    ([3, 18], [1, 2, 9, 8, 16, 24], O.BLACK, 0, [1, 2, 9]),
    # A6 for white: south 14 closed by 22 flips; east 7 and south-east 15 are black but the board ends after them
    # (no wrap to the next row's B0 = 8 or C0 = 24, which are white).
    ([7, 14, 15], [8, 22, 24], O.WHITE, 6, [14]),
    # H7 for black, corner: west run 62, 61, 60 closed at 59; north 55 closed at 47; diagonal 54 then empty 45.
    ([59, 47], [62, 61, 60, 55, 54], O.BLACK, 63, [55, 60, 61, 62]),
    # E4-ish centre move for white flipping in all eight directions, one stone each.
    ([18, 19, 20, 26, 28, 34, 35, 36], [9, 11, 13, 25, 29, 41, 43, 45], O.WHITE, 27, [18, 19, 20, 26, 28, 34, 35, 36]),
]


@pytest.mark.parametrize("black,white,color,move,flips", HAND)
def test_hand_positions(black, white, color, move, flips):
    """Legal moves and flips on hand positions: runs closed by the mover's stone flip, runs that reach an empty
    square or the edge do not, no run wraps from one row's end to the next row (the bitboard engine agrees)."""
    board = board_from(black, white)
    s = O.OthelloBoardState(board, color)
    assert s.flips(move) == flips
    assert move in s.get_valid_moves()
    mask = O.legal_moves_mask(board[None], np.array([color]))[0].reshape(64)
    assert sorted(np.flatnonzero(mask).tolist()) == s.get_valid_moves()
    after = s.state.copy()
    game = O.BatchedOthello(1, board[None], np.array([color]))
    s.umpire(move)
    game.play(np.array([move]))
    assert (game.boards[0] == s.state).all() and game.colors[0] == s.next_hand_color
    assert set(np.flatnonzero((after != s.state).reshape(64)).tolist()) == set(flips) | {move}


def test_pass_and_game_end():
    """Passes and the end: black plays C0 (flipping B0); white then has no legal move but black has (H2, closing
    H1 against H0), so black moves again; after H2 neither side has a stone of the other to take: game over
    (next_hand_color = 0), and further moves raise. The bitboard engine makes the same decisions."""
    board = board_from([0, 56], [1, 57])
    s = O.OthelloBoardState(board, O.BLACK)
    game = O.BatchedOthello(1, board[None], np.array([O.BLACK]))
    assert s.get_valid_moves() == [2, 58]
    s.umpire(2)
    game.play(np.array([2]))
    assert s.get_valid_moves(O.WHITE) == [] and s.next_hand_color == O.BLACK == game.colors[0]
    s.umpire(58)
    game.play(np.array([58]))
    assert s.is_over() and game.colors[0] == 0 and (game.boards[0] == s.state).all()
    with pytest.raises(ValueError):
        s.umpire(3)


# ---------------------------------------------------------------- symmetries

SYMMETRIES = {
    "identity": lambda r, c: (r, c), "transpose": lambda r, c: (c, r), "anti-transpose": lambda r, c: (7 - c, 7 - r),
    "rotate 180": lambda r, c: (7 - r, 7 - c), "rotate 90": lambda r, c: (c, 7 - r), "rotate 270": lambda r, c: (7 - c, r),
    "flip rows": lambda r, c: (7 - r, c), "flip columns": lambda r, c: (r, 7 - c),
}


def transform_square(g, s: int) -> int:
    r, c = g(s // 8, s % 8)
    return r * 8 + c


def transform_board(g, board: np.ndarray) -> np.ndarray:
    out = np.zeros_like(board)
    for s in range(64):
        r, c = g(s // 8, s % 8)
        out[r, c] = board[s // 8, s % 8]
    return out


@pytest.mark.parametrize("name", list(SYMMETRIES))
def test_symmetries(name, games):
    """The rules commute with the square's 8 symmetries: a game transformed by g, replayed from g(start) with the
    same colours, is legal, with the transformed flips, the transformed boards and the same passes. Four of the
    eight (identity, transpose, anti-transpose, rotation by 180°) fix the start, so the transformed game is a legal
    game of Othello; the other four map the start to its colour swap."""
    g = SYMMETRIES[name]
    start_t = transform_board(g, O.start_board())
    fixes = name in ("identity", "transpose", "anti-transpose", "rotate 180")
    assert (start_t == O.start_board()).all() == fixes
    if not fixes:
        assert (start_t == -O.start_board()).all()
    for game in games[:3]:
        a, b = O.OthelloBoardState(), O.OthelloBoardState(start_t, O.BLACK)
        for tok in game[game != 0]:
            m = O.to_string(tok)
            assert sorted(transform_square(g, v) for v in a.get_valid_moves()) == b.get_valid_moves()
            fa = a.umpire(m)
            fb = b.umpire(transform_square(g, m))
            assert sorted(transform_square(g, v) for v in fa) == fb
            assert (transform_board(g, a.state) == b.state).all() and a.next_hand_color == b.next_hand_color
        assert a.is_over() and b.is_over()


# ---------------------------------------------------------------- the batched engine and the generator


def test_bitboard_engine_matches_the_square_engine(games, replay, measure):
    """The bitboard engine (which generates the games and the probe labels) against the square-by-square engine,
    replaying 40 games: after every move the same board, the same mover, the same player to move next (passes
    included), the same legal squares; and legal_moves_mask for both colours on every position reached."""
    n_pos = n_pass = 0
    for i in range(40):
        s = O.OthelloBoardState()
        for t, tok in enumerate(games[i]):
            if tok == 0:
                assert s.is_over() and replay.next_color[i, t - 1] == 0
                break
            assert replay.mover[i, t] == s.next_hand_color
            s.umpire(O.to_string(tok))
            n_pass += int(s.next_hand_color == replay.mover[i, t])
            assert (replay.boards[i, t] == s.state).all() and replay.next_color[i, t] == s.next_hand_color
            assert np.flatnonzero(replay.legal[i, t]).tolist() == s.get_valid_moves()
            n_pos += 1
    boards = replay.boards[:40].reshape(-1, 8, 8)
    for color in (O.BLACK, O.WHITE):
        mask = O.legal_moves_mask(boards, np.full(len(boards), color)).reshape(-1, 64)
        for k in range(0, len(boards), 11):
            assert np.flatnonzero(mask[k]).tolist() == O.OthelloBoardState(boards[k], color).get_valid_moves()
    measure("positions_compared", n_pos)
    measure("passes_seen", n_pass)


def test_generator_is_seeded_and_games_are_legal(games):
    """generate_games: the same games for the same seed, others for another; tokens in 0..60 with padding only
    after a game's last move; each game replays legally with the square engine and ends exactly where the rules
    end it (neither side can move); a game of 60 moves fills the board."""
    assert (O.generate_games(400, 11) == games).all() and not (O.generate_games(400, 12) == games).all()
    assert games.min() >= 0 and games.max() <= 60 and games.shape == (400, 60)
    lengths = (games != 0).sum(1)
    assert all((games[i, lengths[i]:] == 0).all() for i in range(len(games)))
    for i in sorted(set(range(0, 400, 16)) | set(np.flatnonzero(lengths < 60).tolist())):
        s = O.OthelloBoardState()
        for tok in games[i, :lengths[i]]:
            assert not s.is_over()
            s.umpire(O.to_string(tok))
        assert s.is_over()
        if lengths[i] == 60:
            assert (s.state != 0).all()


def test_moves_are_uniform_among_legal_moves(measure):
    """Each move is uniform among the legal moves: the first move over its 4 options and the second over white's 3
    replies to C3 (19), chi-square against uniform over 4,000 seeded games (p > 0.001)."""
    g = O.generate_games(4000, 5)
    first = Counter(g[:, 0].tolist())
    assert set(first) == {O.to_int(s) for s in (19, 26, 37, 44)}
    p1 = stats.chisquare(list(first.values())).pvalue
    replies = Counter(g[g[:, 0] == O.to_int(19), 1].tolist())
    assert set(replies) == {O.to_int(s) for s in _after(19).get_valid_moves()} and len(replies) == 3
    p2 = stats.chisquare(list(replies.values())).pvalue
    measure("first_move_chisquare_p", p1, "> 0.001")
    measure("second_move_chisquare_p", p2, "> 0.001")
    assert p1 > 1e-3 and p2 > 1e-3


def _after(move: int) -> O.OthelloBoardState:
    s = O.OthelloBoardState()
    s.umpire(move)
    return s


# ---------------------------------------------------------------- probe labels


def test_state_stack_to_one_hot():
    """Labels: blank/black/white from the board alone; blank/mine/theirs relative to the mover, "theirs" the
    stones of the player who just moved, "mine" the player to move next's. After black's C3: the 4 black stones
    are theirs, E4 is mine; swapping the mover swaps mine and theirs; every square has exactly one class."""
    s = _after(19)
    colour = O.state_stack_to_one_hot(s.state)
    mine = O.state_stack_to_one_hot(s.state, np.int8(O.BLACK))
    assert colour.shape == mine.shape == (8, 8, 3) and (mine.sum(-1) == 1).all()
    black = {19, 27, 28, 35}
    assert set(np.flatnonzero(colour[..., 1].reshape(64)).tolist()) == black
    assert set(np.flatnonzero(mine[..., 2].reshape(64)).tolist()) == black
    assert np.flatnonzero(mine[..., 1].reshape(64)).tolist() == [36]
    swapped = O.state_stack_to_one_hot(s.state, np.int8(O.WHITE))
    assert torch.equal(swapped[..., [0, 2, 1]], mine) and torch.equal(colour[..., 0], mine[..., 0])


# ---------------------------------------------------------------- the model and its training


def test_config_and_parameter_count():
    """The model: ARENA's vocabulary (61 tokens in and out, 0 = pad), 59 positions, GELU MLPs of 4·d_model, and the
    parameter count that implies: embeddings 61·d + 59·d; per layer 4·d² + 3·d + d (attention, with biases) +
    2·4d·d + 4d + d (MLP) + 4·d (two LayerNorms); a final LayerNorm and a d×61 unembedding with its bias."""
    cfg = O.FULL
    model = O.make_model(cfg)
    d, L = cfg.d_model, cfg.n_layers
    assert (model.cfg.d_vocab, model.cfg.d_vocab_out, model.cfg.n_ctx, model.cfg.d_mlp) == (61, 61, 59, 4 * d)
    per_layer = 4 * d * d + 3 * d + d + 8 * d * d + 4 * d + d + 4 * d
    assert sum(p.numel() for p in model.parameters()) == 120 * d + L * per_layer + 2 * d + 61 * d + 61


def test_next_move_loss_is_cross_entropy_without_pads(games):
    """next_move_loss is torch's cross-entropy of move t+1 over the 60 move logits at every position whose target
    is a move (computed here position by position), and nothing after a game's end changes it."""
    model = O.make_model(O.FAST)
    short = games[(games[:, -1] == 0)][:3] if (games[:, -1] == 0).any() else games[:3]
    batch = torch.as_tensor(np.concatenate([games[:5], short]))
    with torch.no_grad():
        loss = O.next_move_loss(model, batch)
        logits = model(batch[:, :59])
        terms = [F.cross_entropy(logits[b, t, 1:][None], batch[b, t + 1][None] - 1)
                 for b in range(len(batch)) for t in range(59) if batch[b, t + 1] != 0]
        assert torch.allclose(loss, torch.stack(terms).mean(), rtol=1e-5)
        noisy = batch.clone()
        noisy[noisy == 0] = 7
        noisy[:, 59] = batch[:, 59]
        keep_target = batch[:, 1:] != 0
        noisy_loss = F.cross_entropy(model(noisy[:, :59])[..., 1:][keep_target], batch[:, 1:][keep_target] - 1)
        assert torch.allclose(noisy_loss, loss, rtol=1e-5)


@pytest.fixture(scope="module")
def fast():
    return O.train(O.FAST)


FAST_MARGIN = 2.0


def test_fast_training_learns(fast, measure):
    """The training code learns (the fast variant, 150 steps of 32 games, 2 layers of d_model 32): the loss falls
    below ln 60 (uniform over the moves) and its top move is legal more than FAST_MARGIN = 2× as often as a
    uniformly random playable square's on 300 fresh games."""
    model, log = fast
    rate = O.legal_move_rate(model, O.generate_games(300, O.TEST_SEED))
    measure("fast.legal_rate", rate["legal_rate"], f"> {FAST_MARGIN} × {rate['random_square_baseline']:.3f}")
    measure("fast.train_seconds", log["seconds"])
    assert log["history"][-1]["loss"] < math.log(60) - 0.2
    assert rate["legal_rate"] > FAST_MARGIN * rate["random_square_baseline"]


# ---------------------------------------------------------------- probes


def test_probe_trainer_recovers_a_planted_linear_rule():
    """LinearProbeTrainer on data whose labels are the argmax of a known linear map plus noise-free features: the
    probe's accuracy on 500 held-out points is ≥ 96% on average and ≥ 93% on every square (the rule is exactly
    linear; what remains is the generalisation error of a separable 3-class problem in 16 dimensions from 2,500
    points, of order d(K−1)/n ≈ 1%, and the optimiser's)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3000, 16, generator=g)
    W = torch.randn(16, 8, 8, 3, generator=g)
    Y = F.one_hot(torch.einsum("nd,drco->nrco", X, W).argmax(-1), 3).float()
    t = O.LinearProbeTrainer(O.ProbeTrainingArgs(d_model=16, max_epochs=15, lr=3e-2, wd=0.0))
    t.train(X[:2500], Y[:2500])
    acc = t.accuracy(X[2500:], Y[2500:])
    assert acc.mean() >= 0.96 and acc.min() >= 0.93, (acc.mean(), acc.min())


@pytest.fixture(scope="module")
def committed_model():
    return O.load_othello_gpt()


@pytest.fixture(scope="module")
def committed_probe_data(committed_model):
    return O.probe_data(committed_model, O.generate_games(O.PROBE_N, O.PROBE_SEED))


def test_torch_probe_matches_sklearn(committed_probe_data, committed, measure):
    """Our probe (all 64 squares trained jointly by AdamW) against scikit-learn's multinomial LogisticRegression
    (lbfgs, one per square) on the same residuals at the best layer and the same split: the mean test accuracy
    over 16 squares within 1% (the two optimise nearly the same convex loss; the gate trains on 4,000 positions,
    the experiment on 8,000 for all 64 squares, whose committed numbers must agree as well)."""
    layer = committed["headline"]["best_layer"]
    squares = [0, 7, 9, 18, 19, 20, 26, 27, 29, 34, 37, 42, 44, 53, 56, 63]
    r = O.sklearn_vs_torch(committed_probe_data, O.PROBE_TRAIN, layer, O.PROBE_ARGS, squares, max_train=4000)
    test_positions = int((committed_probe_data.game >= O.PROBE_TRAIN).sum())
    assert (r["n_train"], r["n_test"]) == (4000, test_positions)    # the first 4,000 training positions, all test ones
    measure("gate_sklearn.torch_accuracy", r["torch_accuracy"])
    measure("gate_sklearn.sklearn_accuracy", r["sklearn_accuracy"], "within 0.01")
    assert abs(r["torch_accuracy"] - r["sklearn_accuracy"]) <= 0.01
    sk = committed["sklearn"]
    assert abs(sk["torch_accuracy"] - sk["sklearn_accuracy"]) <= 0.01


# ---------------------------------------------------------------- the committed model


def test_checkpoint_files(committed):
    """The committed toy: at most 1 MB, with its configuration, seeds, the commit that trained it and its metrics
    beside it; results.json agrees with it."""
    assert O.CHECKPOINT.stat().st_size <= 1_000_000 and committed["checkpoint_bytes"] == O.CHECKPOINT.stat().st_size
    meta = json.loads(O.CHECKPOINT_META.read_text())
    assert meta["train_config"] == json.loads(json.dumps(asdict(O.FULL))) == committed["full_config"]
    assert meta["seed"] == O.FULL.seed and meta["commit"] == committed["commit"]
    assert meta["metrics"]["test_legal_rate"] == committed["test"]["legal_rate"]
    assert (O.HERE / "figures/world_model.png").stat().st_size > 10_000


LEGAL_MARGIN = 0.25


def test_committed_model_legal_moves(committed_model, committed, measure):
    """The headline, recomputed from the committed model on the same 1,000 test games: the legal-move rate of its
    top move equals the committed one up to the decisions rounding could flip (positions whose top-two logits are
    within 1e-4 relative: counted, usually none), and beats a uniformly random empty square's rate by at least
    LEGAL_MARGIN = 0.25 (the baselines are counts of the games' legal and empty squares: exact)."""
    games = O.generate_games(O.TEST_N, O.TEST_SEED)
    with torch.no_grad():
        logits = committed_model(torch.as_tensor(games[:, :59]))[..., 1:]
    now = O.legal_move_rate(committed_model, games, logits=logits)
    top2 = logits.topk(2, -1).values
    fragile = int(((top2[..., 0] - top2[..., 1]) < 1e-4 * logits.abs().amax(-1)).sum())
    tol = Tolerance(abs=fragile / now["n_positions"], reason=f"{fragile} top moves within rounding of a tie") \
        if fragile else exact("no top move within rounding of a tie")
    then = committed["test"]
    assert now["n_positions"] == then["n_positions"]
    assert_reproduces(now["random_empty_baseline"], then["random_empty_baseline"], Tolerance(rel=1e-12, reason="a mean of exact ratios"))
    assert_reproduces(now["legal_rate"], then["legal_rate"], tol, name="test.legal_rate")
    measure("test.legal_rate", now["legal_rate"], f"> {then['random_empty_baseline']:.3f} + {LEGAL_MARGIN}")
    measure("test.fragile", fragile)
    assert now["legal_rate"] > now["random_empty_baseline"] + LEGAL_MARGIN


# The gate trains its probes on the first GATE_PROBE_GAMES of the 500 training games (3× faster) and scores them on
# the same 100 test games. A probe trained on fewer positions is a little worse, and a float32 AdamW run rounds
# differently on another CPU: each accuracy is the committed (500-game) one within PROBE_TOL, the difference measured
# here between the two training-set sizes (≤ 0.006) plus the run-to-run spread of a few binomial standard errors.
GATE_PROBE_GAMES = 150
PROBE_TOL = statistical(0.02, why="a probe trained on 150 of the 500 games, on other kernels")
MINE_OVER_EMBED = 0.04
MINE_OVER_COLOUR = 0.02


def gate_probe_accuracies(pd, best: int) -> dict:
    """Occupied-square accuracies of the three probes of the headline, trained on GATE_PROBE_GAMES games."""
    train = torch.as_tensor(pd.game < GATE_PROBE_GAMES)
    test = torch.as_tensor(pd.game >= O.PROBE_TRAIN)
    acc = {}
    for key, layer, Y in (("mine_best", best, pd.mine), ("mine_embed", 0, pd.mine), ("colour_best", best, pd.colour)):
        X = pd.resid[layer]
        t = O.LinearProbeTrainer(O.ProbeTrainingArgs(**{**asdict(O.PROBE_ARGS), "layer": layer}))
        t.train(X[train], Y[train])
        acc[key] = O.occupied_accuracy(t, X[test], Y[test])
    return acc


def test_probe_headline(committed_probe_data, committed, measure):
    """The world model (Nanda's finding, on our model): on occupied squares, the blank/mine/theirs probe at the best
    layer reads better than at the embeddings by ≥ MINE_OVER_EMBED and better than the blank/black/white probe at the
    same layer by ≥ MINE_OVER_COLOUR (probes retrained here); each accuracy is its committed value within PROBE_TOL."""
    h = committed["headline"]
    acc = gate_probe_accuracies(committed_probe_data, h["best_layer"])
    for k, v in acc.items():
        measure(f"probe.{k}", v)
    assert_reproduces(acc["mine_best"], h["mine_best_occupied"], PROBE_TOL, name="mine_best")
    assert_reproduces(acc["mine_embed"], h["mine_embed_occupied"], PROBE_TOL, name="mine_embed")
    assert_reproduces(acc["colour_best"], h["colour_best_layer_occupied"], PROBE_TOL, name="colour_best")
    assert acc["mine_best"] >= acc["mine_embed"] + MINE_OVER_EMBED
    assert acc["mine_best"] >= acc["colour_best"] + MINE_OVER_COLOUR


# ---------------------------------------------------------------- the slow run

HEADLINE_TOL = statistical(0.03, why="a second 1,000-step float32 training run's legal-move rate")


@pytest.mark.slow
def test_full_training_reproduces_the_headline(committed, measure):
    """(slow: the full run) FULL trained again from its seeds: its legal-move rate on the test games is the
    committed one within HEADLINE_TOL and beats the random empty square by LEGAL_MARGIN; its mine/theirs probe at
    the committed best layer beats the embeddings by MINE_OVER_EMBED and black/white by MINE_OVER_COLOUR."""
    model, log = O.train(O.FULL)
    now = O.legal_move_rate(model, O.generate_games(O.TEST_N, O.TEST_SEED))
    measure("slow.legal_rate", now["legal_rate"])
    measure("slow.train_seconds", log["seconds"])
    measure("slow.train_cpu_seconds", log["cpu_seconds"])
    assert_reproduces(now["legal_rate"], committed["test"]["legal_rate"], HEADLINE_TOL, name="legal_rate")
    assert now["legal_rate"] > now["random_empty_baseline"] + LEGAL_MARGIN
    pd = O.probe_data(model, O.generate_games(O.PROBE_N, O.PROBE_SEED))
    best = committed["headline"]["best_layer"]
    train = torch.as_tensor(pd.game < O.PROBE_TRAIN)
    acc = {}
    for key, layer, Y in (("mine_best", best, pd.mine), ("mine_embed", 0, pd.mine), ("colour_best", best, pd.colour)):
        t = O.LinearProbeTrainer(O.ProbeTrainingArgs(**{**asdict(O.PROBE_ARGS), "layer": layer}))
        t.train(pd.resid[layer][train], Y[train])
        acc[key] = O.occupied_accuracy(t, pd.resid[layer][~train], Y[~train])
        measure(f"slow.{key}", acc[key])
    assert acc["mine_best"] >= acc["mine_embed"] + MINE_OVER_EMBED
    assert acc["mine_best"] >= acc["colour_best"] + MINE_OVER_COLOUR
