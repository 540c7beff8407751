"""Train an MLP on scikit-learn's bundled 8x8 digits with the public API, as in the notes:
forward pass, loss, backward pass layer by layer, optimizer step, repeat.

    python examples/train_digits.py [OPTIMIZER] [EPOCHS]      # default: adam 30

The loss and the activation are SymPy expressions whose derivatives SymPy derived;
both run as generated Numba kernels.  The same loop is `symopt train digits`.
"""
import sys

import numpy as np

import symopt
from symopt.nn import MLP, load_digits


def main(optimizer: str = "adam", epochs: int = 30, batch_size: int = 32, seed: int = 0) -> float:
    X, y, X_test, y_test = load_digits(seed=seed)          # standardized pixels, labels 0..9
    net = MLP([64, 64, 64, 10], activation="tanh", loss="softmax_cross_entropy", dtype=np.float64, seed=seed)
    print(net)
    print("loss:      ", net.loss_fn.latex())
    print("activation:", net.activation.latex())
    opt = symopt.optimizer(optimizer, net.params)          # the rule's default learning rate
    rng = np.random.default_rng(seed)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(y))                     # mini-batch SGD: shuffle, then batches
        total = 0.0
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            loss, grads = net.loss_and_grads(X[idx], y[idx])   # forward + backprop
            opt.step(grads)                                     # update W1, b1, W2, ... in place
            total += loss * len(idx)
        if epoch % 5 == 0 or epoch == epochs:
            print(f"epoch {epoch:3d}  training loss {total / len(y):.4f}  "
                  f"test accuracy {net.accuracy(X_test, y_test):.4f}")
    acc = net.accuracy(X_test, y_test)
    print(f"test accuracy {acc:.4f}")
    return acc


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "adam", int(sys.argv[2]) if len(sys.argv) > 2 else 30)
