"""A PyTorch peer of AllenNLP's ``_ElmoBiLm`` for benchmarking our Keras ``Embedder``.

AllenNLP (the usual way to run bilm-tf ELMo files in PyTorch) no longer installs
on Python 3.11 / numpy 2, so this module re-implements what its inference path
computes, with the same structure and the same per-step costs:

- ``CharEncoder`` ~ ``_ElmoCharacterEncoder``: char embedding with a zero padding
  row (262 ids), one ``Conv1d`` per width, max over time, activation, highway
  layers stored as one ``Linear`` with [transform; -carry] rows, projection.
- ``LstmCellWithProjection``: separate input/state ``Linear`` layers (gates in
  torch order i, f, j, o; forget +1 folded into the bias), a Python loop over
  time steps on length-sorted rows, memory and projected state clipped.
- ``ElmoLstm``: forward and backward stacks, skip connections from layer 1,
  stateful mode with AllenNLP's per-row state rule.

Written from the facts of AllenNLP's code, not copied from it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import h5py
import numpy as np
import torch
from torch import nn

BOS, EOS, BOW, EOW, PAD = 256, 257, 258, 259, 260


def token_ids(token: str, max_chars: int) -> list[int]:
    """Inference char ids (+1 shifted, 0 = padding) of one token, as ``ELMoCharacterMapper``."""
    if token in ("<S>", "</S>"):
        body = [BOS if token == "<S>" else EOS]
    else:
        body = list(token.encode("utf-8", "ignore")[: max_chars - 2])
    ids = [BOW, *body, EOW] + [PAD] * (max_chars - len(body) - 2)
    return [i + 1 for i in ids]


def batch_to_ids(sentences: Sequence[Sequence[str]], max_chars: int = 50) -> torch.Tensor:
    """``[B, T, max_chars]`` long tensor, rows padded with all-zero token slots (no markers)."""
    out = torch.zeros(len(sentences), max(len(s) for s in sentences), max_chars, dtype=torch.long)
    for row, sentence in enumerate(sentences):
        if sentence:
            out[row, : len(sentence)] = torch.tensor([token_ids(t, max_chars) for t in sentence])
    return out


class CharEncoder(nn.Module):
    """Context-independent token representations from char ids, with ``<S>``/``</S>`` added."""

    def __init__(self, options: dict, weights: h5py.File) -> None:
        super().__init__()
        cnn = options["char_cnn"]
        self.max_chars = cnn["max_characters_per_token"]
        self.activation = {"relu": torch.relu, "tanh": torch.tanh}[cnn["activation"]]
        char_embed = weights["char_embed"][...]
        self.char_embedding = nn.Parameter(
            torch.from_numpy(np.vstack([np.zeros_like(char_embed[:1]), char_embed])), False
        )
        self.convs = nn.ModuleList()
        for i, (width, num) in enumerate(cnn["filters"]):
            conv = nn.Conv1d(cnn["embedding"]["dim"], num, kernel_size=width)
            # bilm-tf (1, width, in, out) -> torch (out, in, width); both are cross-correlations.
            conv.weight.data.copy_(
                torch.from_numpy(weights[f"CNN/W_cnn_{i}"][0].transpose(2, 1, 0))
            )
            conv.bias.data.copy_(torch.from_numpy(weights[f"CNN/b_cnn_{i}"][...]))
            self.convs.append(conv)
        n_filters = sum(num for _, num in cnn["filters"])
        self.highways = nn.ModuleList()
        for k in range(cnn["n_highway"]):
            layer = nn.Linear(n_filters, 2 * n_filters)
            h = weights[f"CNN_high_{k}"]
            # AllenNLP's highway is gate * x + (1 - gate) * f(x); tf's gate is the opposite, so
            # the carry weights are negated: sigmoid(-z) = 1 - sigmoid(z).
            layer.weight.data.copy_(
                torch.from_numpy(np.vstack([h["W_transform"][...].T, -h["W_carry"][...].T]))
            )
            layer.bias.data.copy_(
                torch.from_numpy(np.concatenate([h["b_transform"][...], -h["b_carry"][...]]))
            )
            self.highways.append(layer)
        self.projection = nn.Linear(n_filters, options["lstm"]["projection_dim"])
        self.projection.weight.data.copy_(torch.from_numpy(weights["CNN_proj/W_proj"][...].T))
        self.projection.bias.data.copy_(torch.from_numpy(weights["CNN_proj/b_proj"][...]))
        self.register_buffer("bos", torch.tensor(token_ids("<S>", self.max_chars)))
        self.register_buffer("eos", torch.tensor(token_ids("</S>", self.max_chars)))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids [B, T, C]`` -> (embeddings ``[B, T+2, P]``, mask ``[B, T+2]``)."""
        lengths = ((ids > 0).sum(-1) > 0).long().sum(-1)
        batch, steps, _ = ids.shape
        with_markers = ids.new_zeros(batch, steps + 2, self.max_chars)
        with_markers[:, 1:-1] = ids
        with_markers[:, 0] = self.bos
        with_markers[torch.arange(batch), lengths + 1] = self.eos
        mask = (with_markers > 0).sum(-1) > 0
        x = nn.functional.embedding(with_markers.view(-1, self.max_chars), self.char_embedding)
        x = x.transpose(1, 2)
        x = torch.cat([self.activation(conv(x).max(dim=-1).values) for conv in self.convs], -1)
        for layer in self.highways:
            transform, gate = layer(x).chunk(2, dim=-1)
            gate = torch.sigmoid(gate)
            x = gate * x + (1 - gate) * torch.relu(transform)
        return self.projection(x).view(batch, steps + 2, -1), mask


class LstmCellWithProjection(nn.Module):
    """One direction of one layer; rows must be sorted by length, longest first."""

    def __init__(
        self,
        w_0: np.ndarray,
        b: np.ndarray,
        w_p: np.ndarray,
        forward: bool,
        cell_clip: float,
        proj_clip: float,
    ) -> None:
        super().__init__()
        cell, hidden = w_p.shape
        input_size = w_0.shape[0] - hidden
        self.go_forward, self.cell_clip, self.proj_clip = forward, cell_clip, proj_clip
        self.cell_size, self.hidden_size = cell, hidden
        b = b.copy()
        b[2 * cell : 3 * cell] += 1.0  # bilm-tf adds the forget bias at run time
        # tf column blocks i, j, f, o -> torch row blocks i, f, j, o.
        order = np.concatenate([np.arange(k * cell, (k + 1) * cell) for k in (0, 2, 1, 3)])
        w = w_0.T[order]
        self.input_linearity = nn.Linear(input_size, 4 * cell, bias=False)
        self.state_linearity = nn.Linear(hidden, 4 * cell)
        self.state_projection = nn.Linear(cell, hidden, bias=False)
        self.input_linearity.weight.data.copy_(torch.from_numpy(w[:, :input_size]))
        self.state_linearity.weight.data.copy_(torch.from_numpy(w[:, input_size:]))
        self.state_linearity.bias.data.copy_(torch.from_numpy(b[order]))
        self.state_projection.weight.data.copy_(torch.from_numpy(w_p.T))

    def forward(self, inputs: torch.Tensor, lengths: list[int], state: tuple | None = None):
        """Returns (outputs ``[B, T, H]`` zero past each length, final (h, c))."""
        batch, steps, _ = inputs.shape
        outputs = inputs.new_zeros(batch, steps, self.hidden_size)
        h = inputs.new_zeros(batch, self.hidden_size) if state is None else state[0]
        c = inputs.new_zeros(batch, self.cell_size) if state is None else state[1]
        n = batch if self.go_forward else 0  # number of rows active at this step
        for step in range(steps):
            t = step if self.go_forward else steps - step - 1
            if self.go_forward:
                while lengths[n - 1] <= t:
                    n -= 1
            else:
                while n < batch and lengths[n] > t:
                    n += 1
            z = self.input_linearity(inputs[:n, t]) + self.state_linearity(h[:n].clone())
            i, f, j, o = z.chunk(4, dim=-1)
            memory = torch.sigmoid(i) * torch.tanh(j) + torch.sigmoid(f) * c[:n].clone()
            memory = torch.clamp(memory, -self.cell_clip, self.cell_clip)
            out = self.state_projection(torch.sigmoid(o) * torch.tanh(memory))
            out = torch.clamp(out, -self.proj_clip, self.proj_clip)
            h, c = h.clone(), c.clone()
            h[:n], c[:n] = out, memory
            outputs[:n, t] = out
        return outputs, (h, c)


class ElmoLstm(nn.Module):
    """Forward and backward stacks of ``LstmCellWithProjection``; optionally stateful."""

    def __init__(self, options: dict, weights: h5py.File, stateful: bool = False) -> None:
        super().__init__()
        lstm = options["lstm"]
        self.skip = bool(lstm.get("use_skip_connections"))  # AllenNLP requires it; fixture lacks it
        self.stateful, self.states = stateful, None
        self.layers = nn.ModuleList()
        for layer in range(lstm["n_layers"]):
            for direction in (0, 1):
                g = weights[f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"]
                self.layers.append(
                    LstmCellWithProjection(
                        g["W_0"][...],
                        g["B"][...],
                        g["W_P_0"][...],
                        direction == 0,
                        lstm["cell_clip"],
                        lstm["proj_clip"],
                    )
                )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """``x [B, T, P]`` -> per layer ``[B, T, 2P]`` (forward | backward), original row order."""
        lengths, order = mask.long().sum(-1).sort(descending=True)
        restore = order.argsort()
        x, lengths = x[order], lengths.tolist()
        initial = self._initial_states(x.shape[0], order)
        outputs, finals, inputs = [], [], [x, x]
        for k, cell in enumerate(self.layers):
            out, final = cell(inputs[k % 2], lengths, initial[k])
            if self.skip and k >= 2:
                out = out + inputs[k % 2]
            finals.append(final)
            inputs[k % 2] = out
            if k % 2 == 1:
                outputs.append(torch.cat(inputs, -1)[restore])
        if self.stateful:
            self._update_states(finals, restore)
        return outputs

    def _initial_states(self, batch: int, order: torch.Tensor) -> list:
        """Row b starts from stored row b (zeros for rows never seen), sorted like the batch."""
        if not self.stateful or self.states is None:
            return [None] * len(self.layers)
        initial = []
        for h, c in self.states:
            pad = max(0, batch - h.shape[0])
            h, c = (nn.functional.pad(s, (0, 0, 0, pad))[:batch][order] for s in (h, c))
            initial.append((h, c))
        return initial

    def _update_states(self, finals: list, restore: torch.Tensor) -> None:
        """Rows of this batch replace their stored state; rows beyond the batch keep theirs."""
        new = [(h[restore], c[restore]) for h, c in finals]
        if self.states is not None and self.states[0][0].shape[0] > new[0][0].shape[0]:
            batch = new[0][0].shape[0]
            new = [
                (torch.cat([h, old_h[batch:]]), torch.cat([c, old_c[batch:]]))
                for (h, c), (old_h, old_c) in zip(new, self.states, strict=True)
            ]
        self.states = new


class TorchElmoBiLm(nn.Module):
    """``_ElmoBiLm``: activations per layer with ``<S>``/``</S>``; ``embed`` strips them."""

    def __init__(self, options_file: str, weight_file: str, stateful: bool = False) -> None:
        super().__init__()
        with open(options_file, encoding="utf-8") as f:
            options = json.load(f)
        with h5py.File(weight_file, "r") as weights:
            self.token_embedder = CharEncoder(options, weights)
            self.elmo_lstm = ElmoLstm(options, weights, stateful)
        self.requires_grad_(False)
        self.eval()

    def forward(self, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        embedding, mask = self.token_embedder(ids)
        return [torch.cat([embedding, embedding], -1), *self.elmo_lstm(embedding, mask)], mask

    def embed(self, sentences: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
        """TF-Hub style outputs (``elmo`` with equal layer weights): markers stripped, zero past
        each length."""
        ids = batch_to_ids(sentences, self.token_embedder.max_chars)
        activations, mask = self(ids)
        keep = mask[:, 2:].unsqueeze(-1)  # position t+1 is token t when t + 2 < length
        out = {"sequence_len": np.array([len(s) for s in sentences], dtype=np.int32)}
        p = activations[0].shape[-1] // 2
        out["word_emb"] = (activations[0][:, 1:-1, :p] * keep).numpy()
        for layer, act in enumerate(activations[1:], start=1):
            out[f"lstm_outputs{layer}"] = (act[:, 1:-1] * keep).numpy()
        # AllenNLP's ScalarMix with its initial (zero) weights and gamma 1: the mean of layers.
        elmo = sum(act[:, 1:-1] * keep for act in activations) / len(activations)
        out["elmo"] = elmo.numpy()
        out["default"] = (elmo.sum(1) / keep.sum(1).clamp(min=1)).numpy()
        return out
