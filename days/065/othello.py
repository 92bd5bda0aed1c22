"""Day 65: Othello-GPT and its world model, trained here (ARENA 1.5.3 OthelloGPT, part 1).

ARENA downloads Li et al.'s Othello-GPT (8 layers, d_model 512, trained on millions of synthetic games) and a
probe Neel Nanda trained on it. Neither exists on our machines, so this day builds the pipeline end to end:

1. an Othello engine (``OthelloBoardState``: legal moves, flips, passes, game end), readable square by square,
   and a batched numpy version of the same rules (``BatchedOthello``) that the generator and the probe labels use;
2. synthetic games: each move uniform among the legal moves of the player to move (seeded), in ARENA's encoding:
   the 60 playable squares (the 64 minus the four centre squares) are the tokens 1..60, 0 pads a game that ended
   before its 60th move;
3. a small Othello-GPT (TransformerLens ``HookedTransformer``, ``OTHELLO_CFG``), trained by next-move
   cross-entropy on the games' first 59 moves (a game's last move is only ever a target);
4. linear probes (``LinearProbeTrainer``) on the residual stream at every layer, for two labellings of each square:
   blank / black / white, and blank / mine / theirs, where "mine" are the stones of the player to move next and
   "theirs" those of the player who just moved. A probe for one layer is a tensor W ∈ ℝ^{d_model×8×8×3}; at a
   residual vector x the logits of square (r, c) are x·W[:, r, c, :] and the probe reads their argmax.

Importing this module trains nothing; ``run_experiment`` trains the model, the probes, and writes results.json.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from checks.timing import single_thread

HERE = Path(__file__).parent
CHECKPOINT = HERE / "models" / "othello_gpt_state_dict.pt"
CHECKPOINT_META = HERE / "models" / "othello_gpt.json"

BLACK, WHITE, EMPTY = 1, -1, 0
DIRECTIONS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
CENTRE = [27, 28, 35, 36]                             # D3 D4 E3 E4 in ARENA's labels: occupied from the start
stoi_indices = [i for i in range(64) if i not in CENTRE]   # ARENA's name: token t ↔ square stoi_indices[t − 1]
alpha = "ABCDEFGH"

# ---------------------------------------------------------------- labels and tokens (ARENA's helpers)


def to_board_label(i: int) -> str:
    """Square index 0..63 → ARENA's label: the row as a letter A–H, the column as a digit 0–7 (27 → "D3")."""
    return f"{alpha[i // 8]}{i % 8}"


def to_int(x: int) -> int:
    """Square index 0..63 (not a centre square) → its token 1..60."""
    return stoi_indices.index(int(x)) + 1


def to_string(x: int) -> int:
    """Token 1..60 → its square index 0..63 (ARENA calls the square index the "string" label)."""
    if not 1 <= int(x) <= 60:
        raise ValueError(f"tokens are 1..60, got {x}")
    return stoi_indices[int(x) - 1]


TOKEN_TO_SQUARE = np.array([-1] + stoi_indices)            # 0 (pad) → −1
SQUARE_TO_TOKEN = np.zeros(64, dtype=np.int64)
SQUARE_TO_TOKEN[stoi_indices] = np.arange(1, 61)


def start_board() -> np.ndarray:
    """The starting position: white on D3 and E4, black on D4 and E3; black moves first."""
    board = np.zeros((8, 8), dtype=np.int8)
    board[3, 3] = board[4, 4] = WHITE
    board[3, 4] = board[4, 3] = BLACK
    return board


# ---------------------------------------------------------------- the engine, one board at a time


class OthelloBoardState:
    """One Othello game: ``state`` (8×8, 1 black, −1 white, 0 empty) and ``next_hand_color``, the player to move.

    A move at an empty square s is legal for player p iff along some direction d the squares s + d, …, s + (k−1)d
    hold the opponent (k ≥ 2) and s + kd holds p: those k − 1 stones flip. After a move the opponent moves next if
    they have a legal move; otherwise the same player moves again (a pass); if neither can move the game is over
    (``next_hand_color`` = 0)."""

    def __init__(self, board: np.ndarray | None = None, next_hand_color: int = BLACK):
        self.state = start_board() if board is None else np.array(board, dtype=np.int8)
        self.next_hand_color = next_hand_color
        self.history: list[int] = []

    def flips(self, move: int, color: int | None = None) -> list[int]:
        """The squares (0..63) that playing ``move`` flips for ``color`` (default: the player to move)."""
        color = self.next_hand_color if color is None else color
        r, c = divmod(int(move), 8)
        if self.state[r, c] != EMPTY:
            return []
        out = []
        for dr, dc in DIRECTIONS:
            run, rr, cc = [], r + dr, c + dc
            while 0 <= rr < 8 and 0 <= cc < 8 and self.state[rr, cc] == -color:
                run.append(rr * 8 + cc)
                rr, cc = rr + dr, cc + dc
            if run and 0 <= rr < 8 and 0 <= cc < 8 and self.state[rr, cc] == color:
                out += run
        return sorted(out)

    def get_valid_moves(self, color: int | None = None) -> list[int]:
        """The legal squares (0..63, sorted) for ``color`` (default: the player to move): those that flip."""
        color = self.next_hand_color if color is None else color
        if color == 0:
            return []
        return [s for s in range(64) if self.flips(s, color)]

    def is_over(self) -> bool:
        return self.next_hand_color == 0

    def umpire(self, move: int) -> list[int]:
        """Play ``move`` for the player to move (ValueError if illegal); flip, then decide who moves next (pass,
        game end). Returns the flipped squares."""
        color = self.next_hand_color
        flipped = self.flips(move, color) if color else []
        if not flipped:
            raise ValueError(f"illegal move {to_board_label(int(move))} for {color}")
        r, c = divmod(int(move), 8)
        self.state[r, c] = color
        for s in flipped:
            self.state[s // 8, s % 8] = color
        self.history.append(int(move))
        if self.get_valid_moves(-color):
            self.next_hand_color = -color
        elif self.get_valid_moves(color):
            self.next_hand_color = color          # the opponent passes
        else:
            self.next_hand_color = 0              # neither can move: game over
        return flipped


# ---------------------------------------------------------------- the engine, batched (numpy)


# Bitboards: a position is two uint64 masks (black, white), bit r·8 + c for square (r, c). Moving every stone one
# step in a direction is a shift of the mask by that direction's offset, with the column that would wrap around to
# the other edge of the board masked off (the rows fall off the ends of the 64 bits by themselves).
_COL0 = np.uint64(sum(1 << (8 * r) for r in range(8)))
_COL7 = np.uint64(sum(1 << (8 * r + 7) for r in range(8)))
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_STEPS = [(-9, ~_COL7 & _ALL), (-8, _ALL), (-7, ~_COL0 & _ALL), (-1, ~_COL7 & _ALL), (1, ~_COL0 & _ALL),
          (7, ~_COL7 & _ALL), (8, _ALL), (9, ~_COL0 & _ALL)]            # offset d = 8·dr + dc, as DIRECTIONS
_BITS = np.uint64(1) << np.arange(64, dtype=np.uint64)


def _shift(x: np.ndarray, d: int, mask: np.uint64) -> np.ndarray:
    """Every set bit moved to square s + d (its column wrap masked off)."""
    return ((x << np.uint64(d)) if d > 0 else (x >> np.uint64(-d))) & mask


def to_bitboards(boards: Int[np.ndarray, "B 8 8"]) -> tuple[np.ndarray, np.ndarray]:
    flat = np.asarray(boards).reshape(-1, 64)
    return (np.bitwise_or.reduce(np.where(flat == BLACK, _BITS, np.uint64(0)), axis=1),
            np.bitwise_or.reduce(np.where(flat == WHITE, _BITS, np.uint64(0)), axis=1))


def from_bitboards(black: np.ndarray, white: np.ndarray) -> Int[np.ndarray, "B 8 8"]:
    b = ((black[:, None] & _BITS) != 0).astype(np.int8)
    w = ((white[:, None] & _BITS) != 0).astype(np.int8)
    return (b - w).reshape(-1, 8, 8)


def _legal_bits(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """For each direction d: t = theirs reached from mine by one step, extended along d through theirs (≤ 6 stones);
    one step more, an empty square is legal (from it, −d meets theirs then mine)."""
    empty = ~(mine | theirs)
    legal = np.zeros_like(mine)
    for d, mask in _STEPS:
        t = _shift(mine, d, mask) & theirs
        for _ in range(5):
            t |= _shift(t, d, mask) & theirs
        legal |= _shift(t, d, mask) & empty
    return legal


def _flip_bits(mine: np.ndarray, theirs: np.ndarray, move: np.ndarray) -> np.ndarray:
    """The stones a move (one bit per game) flips: along each direction, the run of theirs from the move, kept if
    the square after it is mine."""
    flips = np.zeros_like(mine)
    for d, mask in _STEPS:
        t = _shift(move, d, mask) & theirs
        for _ in range(5):
            t |= _shift(t, d, mask) & theirs
        flips |= np.where((_shift(t, d, mask) & mine) != 0, t, np.uint64(0))
    return flips


def legal_moves_mask(boards: Int[np.ndarray, "B 8 8"], colors: Int[np.ndarray, " B"]) -> np.ndarray:
    """(B, 8, 8) bool: the legal squares of each board for its player (0: none), by bitboards."""
    colors = np.asarray(colors)
    black, white = to_bitboards(boards)
    mine, theirs = np.where(colors == BLACK, black, white), np.where(colors == BLACK, white, black)
    legal = np.where(colors != 0, _legal_bits(mine, theirs), np.uint64(0))
    return ((legal[:, None] & _BITS) != 0).reshape(-1, 8, 8)


class BatchedOthello:
    """B games at once, as bitboards; ``colors`` (B,) the player to move (0 once a game is over)."""

    def __init__(self, n: int, boards: np.ndarray | None = None, colors: np.ndarray | None = None):
        boards = np.repeat(start_board()[None], n, axis=0) if boards is None else np.asarray(boards)
        self.black, self.white = to_bitboards(boards)
        self.colors = np.full(n, BLACK, dtype=np.int8) if colors is None else np.asarray(colors, dtype=np.int8)

    @property
    def boards(self) -> np.ndarray:
        return from_bitboards(self.black, self.white)

    def _sides(self, colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.where(colors == BLACK, self.black, self.white), np.where(colors == BLACK, self.white, self.black)

    def legal_bits(self) -> np.ndarray:
        mine, theirs = self._sides(self.colors)
        return np.where(self.colors != 0, _legal_bits(mine, theirs), np.uint64(0))

    def legal(self) -> np.ndarray:
        """(B, 64) bool: each game's legal squares for the player to move."""
        return (self.legal_bits()[:, None] & _BITS) != 0

    def play(self, moves: np.ndarray) -> np.ndarray:
        """Play square ``moves[b]`` in every game that is not over (ValueError on an illegal move); returns the
        colour that moved (0 for games already over). Then the same pass/game-end rule as OthelloBoardState."""
        c = self.colors.copy()
        active = c != 0
        bit = np.where(active, _BITS[np.asarray(moves) % 64], np.uint64(0))
        if ((bit & self.legal_bits()) != bit).any():
            raise ValueError("illegal move in batch")
        mine, theirs = self._sides(c)
        flips = _flip_bits(mine, theirs, bit)
        mine, theirs = mine | bit | flips, theirs & ~flips
        black = c == BLACK
        self.black = np.where(active, np.where(black, mine, theirs), self.black)
        self.white = np.where(active, np.where(black, theirs, mine), self.white)
        opp_can = _legal_bits(theirs, mine) != 0
        self_can = _legal_bits(mine, theirs) != 0
        self.colors = np.where(active, np.where(opp_can, -c, np.where(self_can, c, 0)), 0).astype(np.int8)
        return c


def generate_games(n: int, seed: int) -> Int[np.ndarray, "n 60"]:
    """n synthetic games as tokens (int64, 1..60, 0 after a game's end): each move uniform among the legal squares
    of the player to move (numpy's default_rng(seed): the same games for the same (n, seed))."""
    rng = np.random.default_rng(seed)
    game = BatchedOthello(n)
    tokens = np.zeros((n, 60), dtype=np.int64)
    for t in range(60):
        legal = game.legal()
        if not legal.any():
            break
        moves = np.where(legal, rng.random((n, 64)), -1.0).argmax(1)
        active = game.colors != 0
        game.play(moves)
        tokens[active, t] = SQUARE_TO_TOKEN[moves[active]]
    return tokens


@dataclass
class Replay:
    """What replaying token games gives, per game and move t (after move t): ``boards`` (n, 60, 8, 8), ``mover``
    (n, 60) the colour that played move t (0 on padding), ``next_color`` (n, 60) the player to move after it (0 when
    the game is over), ``legal`` (n, 60, 64) the legal squares then."""

    boards: np.ndarray
    mover: np.ndarray
    next_color: np.ndarray
    legal: np.ndarray


def replay_games(tokens: Int[np.ndarray, "n 60"]) -> Replay:
    """Replay token games with the batched engine (ValueError if any move is illegal)."""
    tokens = np.asarray(tokens)
    n, T = tokens.shape
    game = BatchedOthello(n)
    boards = np.zeros((n, T, 8, 8), dtype=np.int8)
    mover = np.zeros((n, T), dtype=np.int8)
    nxt = np.zeros((n, T), dtype=np.int8)
    legal = np.zeros((n, T, 64), dtype=bool)
    for t in range(T):
        active = tokens[:, t] != 0
        if (active & (game.colors == 0)).any():
            raise ValueError(f"a move after the game's end at t={t}")
        if (~active & (game.colors != 0)).any() and t < T:
            raise ValueError(f"padding before the game's end at t={t}")
        squares = np.where(active, TOKEN_TO_SQUARE[tokens[:, t]], 0)
        mover[:, t] = np.where(active, game.play(squares), 0)
        boards[:, t] = game.boards
        nxt[:, t] = game.colors
        legal[:, t] = game.legal()
    return Replay(boards, mover, nxt, legal)


# ---------------------------------------------------------------- probe labels


def state_stack_to_one_hot(boards: Int[np.ndarray, "... 8 8"], mover: Int[np.ndarray, "..."] | None = None
                           ) -> Float[Tensor, "... 8 8 3"]:
    """One-hot board states. With ``mover`` (the colour that just moved): classes blank / mine / theirs, "mine" the
    stones of the player to move next (not the mover), "theirs" the mover's. Without: blank / black / white."""
    boards = torch.as_tensor(np.asarray(boards, dtype=np.int64))
    if mover is None:
        cls = torch.where(boards == BLACK, 1, torch.where(boards == WHITE, 2, 0))
    else:
        rel = boards * torch.as_tensor(np.asarray(mover, dtype=np.int64))[..., None, None]
        cls = torch.where(rel == -1, 1, torch.where(rel == 1, 2, 0))
    return F.one_hot(cls, 3).float()


# ---------------------------------------------------------------- the model


def othello_config(n_layers: int = 4, d_model: int = 64, n_heads: int = 4, seed: int = 0) -> HookedTransformerConfig:
    """ARENA's Othello-GPT shape, made small: 61 tokens in and out (0 = pad, never predicted), 59 positions, GELU MLPs
    of 4·d_model, LayerNorm. ARENA's: 8 layers, d_model 512, 8 heads, d_mlp 2048."""
    return HookedTransformerConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
                                   d_mlp=4 * d_model, d_vocab=61, d_vocab_out=61, n_ctx=59, act_fn="gelu",
                                   normalization_type="LN", seed=seed, device="cpu")


@dataclass(frozen=True)
class TrainConfig:
    n_layers: int = 3
    d_model: int = 64
    n_heads: int = 4
    n_games: int = 40_000         # the training set (generated once, then epochs over it)
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    seed: int = 0
    data_seed: int = 1
    eval_seed: int = 2
    eval_n: int = 500
    eval_every: int = 200


FULL = TrainConfig()
FAST = TrainConfig(n_layers=2, d_model=32, n_heads=2, n_games=4000, steps=150, batch_size=32, lr=3e-3, warmup=20,
                   eval_n=200, eval_every=50)



def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to 0."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * 0.5 * (1 + np.cos(np.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))


def next_move_loss(model: HookedTransformer, games: Int[Tensor, "b 60"]) -> Tensor:
    """Cross-entropy of move t+1 given moves 1..t+1's prefix, over positions whose target is a real move (pads out);
    the pad logit is excluded from the softmax (it is never a move)."""
    logits = model(games[:, :59])[..., 1:]
    targets = games[:, 1:] - 1
    keep = targets >= 0
    return F.cross_entropy(logits[keep], targets[keep])


def make_model(cfg: TrainConfig) -> HookedTransformer:
    return HookedTransformer(othello_config(cfg.n_layers, cfg.d_model, cfg.n_heads, seed=cfg.seed))


def train(cfg: TrainConfig, log=None) -> tuple[HookedTransformer, dict]:
    """AdamW on next-move cross-entropy over a seeded training set of cfg.n_games games; held-out legal-move rate
    every cfg.eval_every steps. Returns the model and the history with wall and CPU seconds."""
    with single_thread():
        torch.manual_seed(cfg.seed)
        t0, cpu0 = time.perf_counter(), time.process_time()
        data = torch.as_tensor(generate_games(cfg.n_games, cfg.data_seed))
        held_out = generate_games(cfg.eval_n, cfg.eval_seed)
        model = make_model(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        g = torch.Generator().manual_seed(cfg.seed)
        order, pos = torch.randperm(len(data), generator=g), 0
        history, losses = [], []
        for step in range(cfg.steps):
            if pos + cfg.batch_size > len(data):
                order, pos = torch.randperm(len(data), generator=g), 0
            batch = data[order[pos:pos + cfg.batch_size]]
            pos += cfg.batch_size
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = next_move_loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                entry = {"step": step + 1, "loss": float(np.mean(losses[-cfg.eval_every:])),
                         "legal_rate": legal_move_rate(model, held_out)["legal_rate"],
                         "seconds": time.perf_counter() - t0}
                history.append(entry)
                if log:
                    log(entry)
        model.eval()
    return model, {"history": history, "seconds": time.perf_counter() - t0,
                   "cpu_seconds": time.process_time() - cpu0}


@torch.no_grad()
def legal_move_rate(model: HookedTransformer, games: np.ndarray, replay: Replay | None = None,
                    logits: Tensor | None = None) -> dict:
    """How often the model's top next move (pad excluded) is legal, over every position t < 59 after which the game
    goes on, against two baselines on the same positions: a uniformly random empty square (E[#legal/#empty]) and a
    uniformly random one of the 60 playable squares (E[#legal/60]). ``logits``: the model's move logits on these games
    (pad dropped), if already computed."""
    replay = replay_games(games) if replay is None else replay
    if logits is None:
        with single_thread():
            logits = model(torch.as_tensor(games[:, :59]))[..., 1:]
    top_square = TOKEN_TO_SQUARE[logits.argmax(-1).numpy() + 1]                    # (n, 59)
    legal = replay.legal[:, :59]
    keep = replay.next_color[:, :59] != 0
    hit = np.take_along_axis(legal, top_square[..., None], -1)[..., 0]
    n_legal = legal.sum(-1)
    n_empty = (replay.boards[:, :59] == 0).reshape(*keep.shape, 64).sum(-1)
    return {"legal_rate": float(hit[keep].mean()), "n_positions": int(keep.sum()),
            "random_empty_baseline": float((n_legal[keep] / n_empty[keep]).mean()),
            "random_square_baseline": float((n_legal[keep] / 60).mean())}


# ---------------------------------------------------------------- probes


@dataclass
class ProbeTrainingArgs:
    """ARENA's probe-training arguments (a subset): which layer's residual stream (0 = embeddings, l = after block
    l), how many classes, the optimiser, epochs over the cached residuals. ``options`` = 3 (blank/mine/theirs or
    blank/black/white)."""

    layer: int = 2
    options: int = 3
    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.99)
    wd: float = 0.01
    batch_size: int = 256
    max_epochs: int = 8
    seed: int = 0
    d_model: int = 64
    rows: int = 8
    cols: int = 8


class LinearProbeTrainer:
    """Trains a linear probe W ∈ ℝ^{d_model×8×8×options} (and a bias per square and class) by cross-entropy
    averaged over the 64 squares, on residual vectors X (N, d_model) with one-hot labels Y (N, 8, 8, options).
    ARENA's trainer runs the model inside each batch; ours reads residuals cached once (the same inputs)."""

    def __init__(self, args: ProbeTrainingArgs):
        self.args = args
        g = torch.Generator().manual_seed(args.seed)
        self.linear_probe = (torch.randn(args.d_model, args.rows, args.cols, args.options, generator=g)
                             / np.sqrt(args.d_model)).requires_grad_(True)
        self.bias = torch.zeros(args.rows, args.cols, args.options, requires_grad=True)

    def logits(self, X: Float[Tensor, "N d"]) -> Float[Tensor, "N 8 8 options"]:
        return torch.einsum("nd,drco->nrco", X, self.linear_probe) + self.bias

    def train(self, X: Float[Tensor, "N d"], Y: Float[Tensor, "N 8 8 options"]) -> list[float]:
        a = self.args
        opt = torch.optim.AdamW([self.linear_probe, self.bias], lr=a.lr, betas=a.betas, weight_decay=a.wd)
        g = torch.Generator().manual_seed(a.seed)
        target = Y.argmax(-1)
        losses = []
        with single_thread():
            for _ in range(a.max_epochs):
                perm = torch.randperm(len(X), generator=g)
                for i in range(0, len(X), a.batch_size):
                    idx = perm[i:i + a.batch_size]
                    loss = F.cross_entropy(self.logits(X[idx]).reshape(-1, a.options), target[idx].reshape(-1))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
        return losses

    @torch.no_grad()
    def accuracy(self, X: Tensor, Y: Tensor) -> Float[Tensor, "8 8"]:
        """Per-square accuracy of the probe's argmax."""
        return (self.logits(X).argmax(-1) == Y.argmax(-1)).float().mean(0)


@dataclass
class ProbeData:
    """Residuals (layers+1, N, d) at every (game, position) of real moves, and the two labellings (N, 8, 8, 3)."""

    resid: Tensor
    mine: Tensor
    colour: Tensor
    game: np.ndarray


@torch.no_grad()
def probe_data(model: HookedTransformer, games: np.ndarray) -> ProbeData:
    """Run the model once on games' first 59 moves; keep every position whose move is real: resid_pre of block 0
    (embeddings), then resid_post of each block; labels from the engine's replay."""
    rp = replay_games(games)
    with single_thread():
        _, cache = model.run_with_cache(torch.as_tensor(games[:, :59]),
                                        names_filter=lambda n: n.endswith("resid_post") or n == "blocks.0.hook_resid_pre")
    keep = torch.as_tensor(games[:, :59] != 0)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    resid = torch.stack([cache[n][keep] for n in names])
    k = keep.numpy()
    return ProbeData(resid=resid, mine=state_stack_to_one_hot(rp.boards[:, :59][k], rp.mover[:, :59][k]),
                     colour=state_stack_to_one_hot(rp.boards[:, :59][k]), game=np.nonzero(k)[0])


def occupied_accuracy(trainer: LinearProbeTrainer, X: Tensor, Y: Tensor) -> float:
    """Accuracy over occupied squares only (the mine/theirs or black/white decision, blanks left out)."""
    with torch.no_grad():
        pred, true = trainer.logits(X).argmax(-1), Y.argmax(-1)
    occ = true != 0
    return float((pred[occ] == true[occ]).float().mean())


def sklearn_probe_accuracy(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                           squares: list[int], C: float = 1.0) -> np.ndarray:
    """The reference: scikit-learn's multinomial LogisticRegression (lbfgs, L2 with strength 1/C), one per square,
    on the same features; test accuracy per square. y are class indices (N, 64)."""
    from sklearn.linear_model import LogisticRegression

    out = []
    for s in squares:
        classes = np.unique(y_train[:, s])
        if len(classes) == 1:
            out.append(float((y_test[:, s] == classes[0]).mean()))
            continue
        clf = LogisticRegression(C=C, max_iter=500).fit(X_train, y_train[:, s])
        out.append(float(clf.score(X_test, y_test[:, s])))
    return np.array(out)


def probe_every_layer(pd: ProbeData, n_train_games: int, args: ProbeTrainingArgs) -> dict:
    """Both labellings at every layer: a probe trained on the first n_train_games games' positions, scored on the
    rest (all squares, and occupied squares only)."""
    train_mask = torch.as_tensor(pd.game < n_train_games)
    out = {"mine": [], "colour": []}
    for layer in range(pd.resid.shape[0]):
        X = pd.resid[layer]
        for key, Y in (("mine", pd.mine), ("colour", pd.colour)):
            t = LinearProbeTrainer(ProbeTrainingArgs(**{**asdict(args), "layer": layer, "d_model": X.shape[1]}))
            t.train(X[train_mask], Y[train_mask])
            out[key].append({"layer": layer, "accuracy": float(t.accuracy(X[~train_mask], Y[~train_mask]).mean()),
                             "occupied_accuracy": occupied_accuracy(t, X[~train_mask], Y[~train_mask])})
    return out


def sklearn_vs_torch(pd: ProbeData, n_train_games: int, layer: int, args: ProbeTrainingArgs, squares: list[int],
                     max_train: int | None = None) -> dict:
    """The mine/theirs probe at one layer, ours (all squares jointly) against scikit-learn's (one per square), on the
    same train/test split: mean test accuracy over ``squares`` for each, and the largest per-square gap."""
    train_mask = pd.game < n_train_games
    tr, te = np.flatnonzero(train_mask), np.flatnonzero(~train_mask)
    if max_train is not None:
        tr = tr[:max_train]
    X, Y = pd.resid[layer], pd.mine
    t = LinearProbeTrainer(ProbeTrainingArgs(**{**asdict(args), "layer": layer, "d_model": X.shape[1]}))
    t.train(X[tr], Y[tr])
    ours = t.accuracy(X[te], Y[te]).reshape(64).numpy()[squares]
    y = Y.argmax(-1).reshape(len(Y), 64).numpy()
    theirs = sklearn_probe_accuracy(X[tr].numpy(), y[tr], X[te].numpy(), y[te], squares)
    return {"layer": layer, "squares": len(squares), "n_train": len(tr), "n_test": len(te),
            "torch_accuracy": float(ours.mean()), "sklearn_accuracy": float(theirs.mean()),
            "max_square_gap": float(np.abs(ours - theirs).max())}


# ---------------------------------------------------------------- the checkpoint and the experiment




def load_othello_gpt(path: Path = CHECKPOINT) -> HookedTransformer:
    """The committed Othello-GPT (FULL's shape) as ARENA loads its own: HookedTransformer(cfg) + load_state_dict."""
    model = make_model(FULL)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


TEST_SEED, TEST_N = 3, 1000          # games for the legal-move headline
PROBE_SEED, PROBE_N, PROBE_TRAIN = 4, 600, 500   # games for the probes: 500 to train on, 100 to score
PROBE_ARGS = ProbeTrainingArgs()
SKLEARN_TRAIN = 8000              # training positions for the scikit-learn comparison (lbfgs per square)


def plot(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    h = results["full"]["history"]
    ax1.plot([e["step"] for e in h], [e["legal_rate"] for e in h], marker=".", label="top move legal")
    ax1.axhline(results["test"]["random_empty_baseline"], color="gray", ls="--", label="random empty square")
    ax1.set(xlabel="training step", ylabel="rate", title="Legal-move rate (held-out games)", ylim=(0, 1.02))
    ax1.legend()
    for key, label in (("mine", "blank/mine/theirs"), ("colour", "blank/black/white")):
        rows = results["probes"][key]
        ax2.plot([r["layer"] for r in rows], [r["occupied_accuracy"] for r in rows], marker="o", label=label)
    ax2.axhline(0.5, color="gray", ls=":")
    ax2.set(xlabel="layer (0 = embeddings)", ylabel="probe accuracy on occupied squares",
            title="Linear probes, every layer", ylim=(0.3, 1.02))
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_experiment(out_dir: Path = HERE, full: TrainConfig = FULL, fast: TrainConfig = FAST) -> dict:
    """Train the fast (gate) variant and the full model (committed under models/), measure the legal-move rate on
    TEST_N fresh games and the probes at every layer on PROBE_N more; results.json and figures/world_model.png."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    fast_model, fast_log = train(fast)
    fast_test = legal_move_rate(fast_model, generate_games(TEST_N, TEST_SEED))
    model, log = train(full, log=lambda e: print(e, flush=True))
    test_games = generate_games(TEST_N, TEST_SEED)
    test = legal_move_rate(model, test_games)
    (out_dir / "models").mkdir(exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out_dir / "models" / CHECKPOINT.name)
    pd = probe_data(model, generate_games(PROBE_N, PROBE_SEED))
    t1 = time.perf_counter()
    probes = probe_every_layer(pd, PROBE_TRAIN, PROBE_ARGS)
    probe_seconds = time.perf_counter() - t1
    mine_occ = [r["occupied_accuracy"] for r in probes["mine"]]
    best = int(np.argmax(mine_occ))
    with single_thread():         # scikit-learn's BLAS too: two threads on the busy 2-core machine were 20× slower
        sk = sklearn_vs_torch(pd, PROBE_TRAIN, best, PROBE_ARGS, list(range(64)), max_train=SKLEARN_TRAIN)
    commit = importlib.import_module("days.060.brackets").git_commit(HERE)
    results = {
        "model_config": {k: getattr(model.cfg, k) for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp",
                                                            "n_ctx", "d_vocab", "d_vocab_out", "act_fn")},
        "n_params": sum(p.numel() for p in model.parameters()), "full_config": asdict(full),
        "fast_config": asdict(fast), "commit": commit,
        "checkpoint_bytes": (out_dir / "models" / CHECKPOINT.name).stat().st_size,
        "test": {**test, "n_games": TEST_N, "seed": TEST_SEED,
                 "games_ending_early": int((test_games[:, -1] == 0).sum())},
        "full": {**log, "final_legal_rate": log["history"][-1]["legal_rate"]},
        "fast": {**fast_log, "test": fast_test},
        "probe_args": asdict(PROBE_ARGS), "probe_games": {"n": PROBE_N, "train": PROBE_TRAIN, "seed": PROBE_SEED,
                                                          "n_positions": int(pd.resid.shape[1])},
        "probes": probes, "probe_seconds": probe_seconds, "sklearn": sk,
        "headline": {"best_layer": best, "mine_best_occupied": mine_occ[best], "mine_embed_occupied": mine_occ[0],
                     "colour_best_layer_occupied": probes["colour"][best]["occupied_accuracy"],
                     "colour_max_occupied": max(r["occupied_accuracy"] for r in probes["colour"]),
                     "mine_best_all": probes["mine"][best]["accuracy"], "mine_embed_all": probes["mine"][0]["accuracy"]},
    }
    (out_dir / "models" / CHECKPOINT_META.name).write_text(json.dumps(
        {"model_config": results["model_config"], "train_config": asdict(full), "seed": full.seed,
         "data_seed": full.data_seed, "commit": commit, "torch": torch.__version__,
         "metrics": {"test_legal_rate": test["legal_rate"], "train_seconds": log["seconds"],
                     "train_cpu_seconds": log["cpu_seconds"]}, "history": log["history"]}, indent=1) + "\n")
    plot(results, out_dir / "figures" / "world_model.png")
    results["experiment_seconds"] = time.perf_counter() - t0
    results["experiment_cpu_seconds"] = time.process_time() - cpu0
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
