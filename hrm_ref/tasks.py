"""Deterministic task generators for the trained fixtures: N×N Sudoku with rectangular boxes.

Every random choice comes from one `numpy.random.default_rng(seed)`, so a seed fixes the arrays
on every machine. Encoding as upstream's sudoku dataset: token 0 = pad, 1 = blank, digit d → d + 1
(vocabulary N + 2); `labels` are the solution's tokens at every cell.

A grid is a shuffled base pattern (digits, rows within bands, bands, columns within stacks,
stacks, and a transpose when the boxes are square), so every valid grid can come out. A puzzle
blanks cells of its grid in random order, skipping any blank that would admit a second solution,
until it has the number of blanks drawn for it (or no cell can go): every puzzle has one solution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD, BLANK = 0, 1  # token ids; digit d is token d + 1


@dataclass(frozen=True)
class SudokuTask:
    """N×N Sudoku, N = box_rows · box_cols, with a number of blanks drawn in [min_blanks, max_blanks]."""

    box_rows: int
    box_cols: int
    min_blanks: int
    max_blanks: int

    @property
    def size(self) -> int:
        return self.box_rows * self.box_cols

    @property
    def seq_len(self) -> int:
        return self.size * self.size

    @property
    def vocab_size(self) -> int:
        return self.size + 2


TASKS: dict[str, SudokuTask] = {
    # 4×4 (2×2 boxes): 288 grids; at most 12 blanks keep a unique solution (4 clues).
    "sudoku4": SudokuTask(box_rows=2, box_cols=2, min_blanks=6, max_blanks=12),
    # 6×6 (boxes of 2 rows × 3 columns).
    "sudoku6": SudokuTask(box_rows=2, box_cols=3, min_blanks=12, max_blanks=20),
}


def _permutation_blocks(rng: np.random.Generator, blocks: int, per_block: int) -> np.ndarray:
    """An index order that permutes whole blocks and the lines within each block."""
    order = rng.permutation(blocks)
    return np.concatenate([block * per_block + rng.permutation(per_block) for block in order])


def random_grid(rng: np.random.Generator, box_rows: int, box_cols: int) -> np.ndarray:
    """A valid solved grid [N, N] of digits 1..N."""
    n = box_rows * box_cols
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    base = (box_cols * (r % box_rows) + r // box_rows + c) % n  # rows of a band shift by a box width
    digits = rng.permutation(n) + 1
    rows = _permutation_blocks(rng, n // box_rows, box_rows)  # bands of box_rows rows
    cols = _permutation_blocks(rng, n // box_cols, box_cols)  # stacks of box_cols columns
    grid = digits[base[rows][:, cols]]
    if box_rows == box_cols and rng.integers(2):
        grid = grid.T
    return grid


def is_valid_solution(grid: np.ndarray, box_rows: int, box_cols: int) -> bool:
    """Every row, column and box of `grid` [N, N] holds each digit 1..N once."""
    n = box_rows * box_cols
    want = np.arange(1, n + 1)
    boxes = grid.reshape(n // box_rows, box_rows, n // box_cols, box_cols).transpose(0, 2, 1, 3).reshape(n, n)
    return grid.shape == (n, n) and all(np.array_equal(np.sort(lines, axis=1), np.broadcast_to(want, (n, n)))
                                        for lines in (grid, grid.T, boxes))


class _Solver:
    """Counts solutions of one N×N shape by backtracking on bitmasks (fewest candidates first)."""

    def __init__(self, box_rows: int, box_cols: int) -> None:
        n = box_rows * box_cols
        self.n = n
        self.full = (1 << n) - 1
        self.box_of = [(i // n // box_rows) * (n // box_cols) + (i % n) // box_cols for i in range(n * n)]

    def count(self, cells: list[int], limit: int = 2) -> int:
        """Solutions of `cells` (N·N digits, 0 = blank), counted up to `limit`."""
        n = self.n
        rows, cols, boxes = [0] * n, [0] * n, [0] * n
        blanks = []
        for i, digit in enumerate(cells):
            if digit == 0:
                blanks.append(i)
                continue
            bit = 1 << (digit - 1)
            r, c, b = i // n, i % n, self.box_of[i]
            if (rows[r] | cols[c] | boxes[b]) & bit:
                return 0
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
        return self._search(blanks, rows, cols, boxes, limit)

    def _search(self, blanks: list[int], rows: list[int], cols: list[int], boxes: list[int], limit: int) -> int:
        if not blanks:
            return 1
        n = self.n
        best, best_free, best_count = -1, 0, n + 1
        for k, i in enumerate(blanks):
            free = self.full & ~(rows[i // n] | cols[i % n] | boxes[self.box_of[i]])
            count = bin(free).count("1")
            if count < best_count:
                best, best_free, best_count = k, free, count
                if count <= 1:
                    break
        if best_count == 0:
            return 0
        i = blanks[best]
        rest = blanks[:best] + blanks[best + 1:]
        r, c, b = i // n, i % n, self.box_of[i]
        found = 0
        while best_free and found < limit:
            bit = best_free & -best_free
            best_free ^= bit
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            found += self._search(rest, rows, cols, boxes, limit - found)
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
        return found


def count_solutions(puzzle: np.ndarray, box_rows: int, box_cols: int, limit: int = 2) -> int:
    """Solutions of `puzzle` [N, N] (0 = blank), counted up to `limit`."""
    return _Solver(box_rows, box_cols).count([int(d) for d in puzzle.reshape(-1)], limit)


def _blank_cells(rng: np.random.Generator, grid: np.ndarray, task: SudokuTask, solver: _Solver) -> np.ndarray:
    """`grid` with cells blanked in random order while the solution stays unique."""
    target = int(rng.integers(task.min_blanks, task.max_blanks + 1))
    cells = [int(d) for d in grid.reshape(-1)]
    blanks = 0
    for i in rng.permutation(len(cells)):
        if blanks == target:
            break
        digit, cells[i] = cells[i], 0
        if solver.count(cells, 2) == 1:
            blanks += 1
        else:
            cells[i] = digit
    return np.array(cells, dtype=np.int64).reshape(grid.shape)


def sudoku_puzzles(task: SudokuTask, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct puzzles and their solutions, digits [count, N·N] (0 = blank), from `seed`."""
    rng = np.random.default_rng(seed)
    solver = _Solver(task.box_rows, task.box_cols)
    seen: set[bytes] = set()
    puzzles, solutions = [], []
    attempts = 0
    while len(puzzles) < count:
        attempts += 1
        if attempts > 20 * count + 1000:
            raise RuntimeError(f"cannot find {count} distinct puzzles of this task (found {len(puzzles)})")
        grid = random_grid(rng, task.box_rows, task.box_cols)
        puzzle = _blank_cells(rng, grid, task, solver).reshape(-1)
        key = puzzle.astype(np.uint8).tobytes()
        if key in seen:
            continue
        seen.add(key)
        puzzles.append(puzzle)
        solutions.append(grid.reshape(-1))
    return np.stack(puzzles), np.stack(solutions)


def encode(puzzles: np.ndarray, solutions: np.ndarray) -> dict[str, np.ndarray]:
    """Upstream's tokens: the batch dict the model and the loss read."""
    return {"inputs": np.where(puzzles == 0, BLANK, puzzles + 1).astype(np.int32),
            "puzzle_identifiers": np.zeros(len(puzzles), dtype=np.int32),
            "labels": (solutions + 1).astype(np.int32)}


def sudoku_dataset(task: SudokuTask | str, count: int, seed: int) -> dict[str, np.ndarray]:
    """`count` distinct puzzles of `task`, encoded: inputs, puzzle_identifiers (zeros), labels."""
    task = TASKS[task] if isinstance(task, str) else task
    return encode(*sudoku_puzzles(task, count, seed))


def train_test_split(task: SudokuTask | str, n_train: int, n_test: int,
                     seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Disjoint train and test sets: one pool of distinct puzzles, the first `n_test` held out."""
    data = sudoku_dataset(task, n_train + n_test, seed)
    return ({k: v[n_test:] for k, v in data.items()}, {k: v[:n_test] for k, v in data.items()})
