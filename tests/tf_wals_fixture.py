"""The published fixture of TensorFlow 1.x ``factorization_ops_test.py`` (WALSModel).

Only the numbers are TF's: the 5 × 7 input, the sharded column initialisation and
weights of its process-input tests, and the factors and projections they expect after
one row sweep and one column sweep (checked there at atol 1e-3); and the factors and
losses of its full-batch factorisation scenario. The helpers are ours.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

INPUT_MATRIX = np.array(
    [
        [0.1, 0.0, 0.2, 0.0, 0.4, 0.5, 0.0],
        [0.0, 1.1, 0.0, 1.3, 1.4, 0.0, 1.6],
        [2.0, 0.0, 0.0, 2.3, 0.0, 2.5, 0.0],
        [3.0, 0.0, 3.2, 3.3, 0.0, 3.5, 0.0],
        [0.0, 4.1, 0.0, 0.0, 4.4, 0.0, 4.6],
    ],
    dtype=np.float32,
)

# col_init as TF gives it: one array per column shard (3 shards of 3, 2 and 2 rows)
COL_INIT = [
    [[-0.36444709, -0.39077035, -0.32528427],
     [1.19056475, 0.07231052, 2.11834812],
     [0.93468881, -0.71099287, 1.91826844]],
    [[1.18160152, 1.52490723, -0.50015002],
     [1.82574749, -0.57515913, -1.32810032]],
    [[-0.15515432, -0.84675711, 0.13097958],
     [-0.9246484, 0.69117504, 1.2036494]],
]
ROW_WEIGHTS = [[0.1, 0.2, 0.3], [0.4, 0.5]]
COL_WEIGHTS = [[0.1, 0.2, 0.3], [0.4, 0.5], [0.6, 0.7]]
MODEL_ARGS = dict(num_row_shards=2, num_col_shards=3, regularization=0.01,
                  unobserved_weight=0.1, col_init=COL_INIT, row_weights=ROW_WEIGHTS,
                  col_weights=COL_WEIGHTS)

# after one row sweep (U, by row shard) and then one column sweep (V, by column shard)
ROW_FACTORS = [
    [[0.097689, -0.219293, -0.020780],
     [0.50842, 0.64626, 0.22364],
     [0.401159, -0.046558, -0.192854]],
    [[1.20597, -0.48025, 0.35582],
     [1.5564, 1.2528, 1.0528]],
]
COL_FACTORS = [
    [[2.4725, -1.2950, -1.9980],
     [0.44625, 1.50771, 1.27118],
     [1.39801, -2.10134, 0.73572]],
    [[3.36509, -0.66595, -3.51208],
     [0.57191, 1.59407, 1.33020]],
    [[3.3459, -1.3341, -3.3008],
     [0.57366, 1.83729, 1.26798]],
]
# projections with projection_weights=None (1.0) of rows [1, 4], columns [5, 3, 1]
# and, transposed, columns [3, 6]
PROJECTED_ROWS_1_4 = [[0.569082, 0.715088, 0.31777], [1.915879, 1.992677, 1.109057]]
PROJECTED_COLS_5_3_1 = [[3.471045, -1.250835, -3.598917],
                        [3.585139, -0.487476, -3.852232],
                        [0.346433, 1.360644, 1.677121]]
PROJECTED_COLS_3_6 = [[3.585139, -0.487476, -3.852232], [0.557937, 1.813907, 1.331171]]

# sum_weights scenario: 5 × 5, W0 = 0.1, one shard each, three stored entries
SUM_WEIGHTS_ARGS = dict(unobserved_weight=0.1, row_weights=[[8.0, 18.0, 28.0, 38.0, 48.0]],
                        col_weights=[[90.0, 91.0, 92.0, 93.0, 94.0]])
SUM_WEIGHTS_ENTRIES = ([0, 2, 4], [1, 3, 1], [666.0, 777.0, 888.0])
SUM_WEIGHTS_ROWS = 12835.8333
SUM_WEIGHTS_COLS = 19252.5

# full-batch factorisation: row_init 2, col_init 1, weights 1, W0 0.1, λ 0.01, shards 2 × 3
FULL_BATCH_ROWS = [
    [[[0.093546, 0.093553, 0.093553], [0.420985, 0.420975, 0.420975],
      [0.673242, 0.67328, 0.67328]],
     [[1.013467, 1.013465, 1.013465], [1.297011, 1.297039, 1.297039]]],
    [[[0.08223, 0.108721, 0.108142], [0.412234, 0.41563, 0.415546],
      [0.660805, 0.694732, 0.698372]],
     [[1.109942, 1.01535, 1.018449], [1.224644, 1.290318, 1.284723]]],
]
FULL_BATCH_COLS = [
    [[[0.882218, 0.882083, 0.882104], [0.964144, 0.964672, 0.964648],
      [0.871497, 0.869866, 0.869855]],
     [[0.999492, 0.999434, 0.999458], [1.052393, 1.052634, 1.052561]],
     [[1.058472, 1.059054, 1.05908], [1.107913, 1.107737, 1.107763]]],
    [[[2.689738, -0.26665, 0.107037], [-1.746963, 2.472947, 2.107421],
      [4.877673, -1.40563, -1.174043]],
     [[2.394881, 0.058395, 0.448117], [-1.754005, 2.605651, 2.243201]],
     [[2.215456, 0.21321, 0.645511], [-1.632659, 2.630967, 2.271138]]],
]
FULL_BATCH_ROW_LOSS = [13.124323844909668, 12.234291076660156]
FULL_BATCH_COL_LOSS = [12.321547508239746, 11.303979873657227]


def tf_slice(rows=None, cols=None, *, transpose=False, shuffle_seed=None, matrix=INPUT_MATRIX):
    """A scipy COO of the stored entries of some rows (or columns), entry order kept.

    Entries come row by row (column by column) in the order given, each in row-major
    order, optionally shuffled; ``transpose`` gives the slice of the transposed matrix.
    The shape is the largest index + 1, as TF's test helper makes it.
    """
    r, c = np.nonzero(matrix)
    if rows is not None:
        pick = np.concatenate([np.flatnonzero(r == i) for i in rows])
        r, c = r[pick], c[pick]
    if cols is not None:
        pick = np.concatenate([np.flatnonzero(c == j) for j in cols])
        r, c = r[pick], c[pick]
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(r.size)
        r, c = r[order], c[order]
    values = matrix[r, c].astype(np.float64)
    if transpose:
        r, c = c, r
    return scipy.sparse.coo_matrix((values, (r, c)), shape=(r.max() + 1, c.max() + 1))


def flat(shards):
    """Stack a list of shards into one array."""
    return np.concatenate([np.asarray(s, dtype=np.float64) for s in shards])
