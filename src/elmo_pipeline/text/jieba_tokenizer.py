"""jieba's accurate mode, token for token, but faster (a fused DAG search and a faster HMM).

tests/test_segment.py checks equality with ``jieba.Tokenizer.lcut`` and
``jieba.finalseg.cut`` on real text.
"""

from __future__ import annotations

import math
from typing import Any


class JiebaBlockTokenizer:
    """jieba's accurate mode (``Tokenizer.lcut(text, HMM=hmm)``), exactly, but faster.

    jieba splits a text into runs of Han characters/letters/digits
    (``re_han_default``) and segments each run on its own, so the tokens of a
    run depend on nothing else. Two savings follow, neither changing a token:

    * runs, and the unknown stretches that go to jieba's HMM (finalseg), are
      memoised (repeated clauses are common in real text); a cache is cleared
      when it holds ``max_entries`` entries, which bounds memory;
    * a new run is segmented by :meth:`_cut_run`, jieba's ``__cut_DAG`` with
      ``get_DAG`` and ``calc`` fused into one backward pass that does the same
      float operations in the same order (so the same ties are broken the
      same way); unknown stretches go to jieba's HMM through :class:`FinalsegCut`.

    Other characters become one token each, whitespace none (as in jieba,
    minus its whitespace tokens). tests/test_segment.py checks equality with
    ``Tokenizer.lcut`` on real text in both HMM modes.
    """

    def __init__(self, tokenizer: Any, hmm: bool, max_entries: int = 200_000) -> None:
        import jieba
        import jieba.finalseg

        self._split = jieba.re_han_default.split
        self._is_alnum_char = jieba.re_eng.match
        self._hmm_cut = FinalsegCut(jieba.finalseg)
        self._freq: dict[str, int] = tokenizer.FREQ
        self._log_total = math.log(tokenizer.total)
        self._hmm = hmm
        self._cache: dict[str, list[str]] = {}
        self._hmm_cache: dict[str, list[str]] = {}
        self._max_entries = max_entries

    def __call__(self, text: str) -> list[str]:
        tokens: list[str] = []
        cache = self._cache
        # With a capturing group, re.split puts the runs at the odd indices.
        for index, part in enumerate(self._split(text)):
            if not part:
                continue
            if index % 2 == 0:
                tokens.extend("".join(part.split()))
                continue
            words = cache.get(part)
            if words is None:
                if len(cache) >= self._max_entries:
                    cache.clear()
                words = cache[part] = self._cut_run(part)
            tokens.extend(words)
        return tokens

    def _best_ends(self, run: str) -> list[int]:
        """For each start index, the end index of the word on the most probable path.

        jieba: DAG[k] = ends i with FREQ[run[k:i+1]] > 0, scanning while the
        prefix is in FREQ (else [k]); route[k] = max over x in DAG[k] of
        (log(FREQ.get(word) or 1) - logtotal + route[x+1][0], x).
        """
        freq_get = self._freq.get
        log_total = self._log_total
        n = len(run)
        scores = [0.0] * (n + 1)
        ends = [0] * n
        for k in range(n - 1, -1, -1):
            best_score = best_end = None
            i = k
            frag = run[k]
            while i < n:
                count = freq_get(frag)
                if count is None:
                    break
                if count:
                    score = math.log(count) - log_total + scores[i + 1]
                    # max() over (score, end) tuples: a tie goes to the larger end.
                    if best_score is None or score >= best_score:
                        best_score, best_end = score, i
                i += 1
                frag = run[k : i + 1]
            if best_end is None:
                best_score, best_end = 0.0 - log_total + scores[k + 1], k
            scores[k] = best_score
            ends[k] = best_end
        return ends

    def _cut_run(self, run: str) -> list[str]:
        """jieba's ``__cut_DAG`` (HMM) or ``__cut_DAG_NO_HMM`` for one run, as a list."""
        ends = self._best_ends(run)
        words: list[str] = []
        n = len(run)
        x = 0
        buf = ""
        if not self._hmm:
            is_alnum_char = self._is_alnum_char
            while x < n:
                y = ends[x] + 1
                word = run[x:y]
                if y - x == 1 and is_alnum_char(word):
                    buf += word
                else:
                    if buf:
                        words.append(buf)
                        buf = ""
                    words.append(word)
                x = y
            if buf:
                words.append(buf)
            return words
        while x < n:
            y = ends[x] + 1
            if y - x == 1:
                buf += run[x]
            else:
                if buf:
                    self._flush_single_chars(buf, words)
                    buf = ""
                words.append(run[x:y])
            x = y
        if buf:
            self._flush_single_chars(buf, words)
        return words

    def _flush_single_chars(self, buf: str, words: list[str]) -> None:
        """A stretch of one-character words: an unknown word for jieba's HMM, or single chars."""
        if len(buf) == 1:
            words.append(buf)
        elif not self._freq.get(buf):
            hmm_words = self._hmm_cache.get(buf)
            if hmm_words is None:
                if len(self._hmm_cache) >= self._max_entries:
                    self._hmm_cache.clear()
                hmm_words = self._hmm_cache[buf] = self._hmm_cut(buf)
            words.extend(hmm_words)
        else:
            words.extend(buf)


class FinalsegCut:
    """``jieba.finalseg.cut`` (the HMM for unknown words), exactly, with a faster Viterbi.

    jieba's ``viterbi`` takes, per character and state, the max over
    ``(V[t-1][y0] + trans[y0][y] + emit, y0)`` tuples and copies whole paths;
    this keeps back-pointers and unrolls the four states, with the same sums
    in the same order and the same tie-breaks (the larger state letter wins,
    as in a tuple comparison).
    """

    def __init__(self, finalseg: Any) -> None:
        low = finalseg.MIN_FLOAT
        trans = finalseg.trans_P
        self._start = [finalseg.start_P[y] for y in "BMES"]
        self._emit = [finalseg.emit_P[y] for y in "BMES"]
        self._low = low
        # PrevStatus: B <- E,S; M <- M,B; S <- S,E; E <- B,M
        self._t = {
            pair: trans[pair[0]].get(pair[1], low)
            for pair in ("EB", "SB", "MM", "BM", "SS", "ES", "BE", "ME")
        }
        self._han = finalseg.re_han
        self._skip = finalseg.re_skip
        self._force_split = finalseg.Force_Split_Words

    def _states(self, obs: str) -> list[str]:
        low = self._low
        emit_b, emit_m, emit_e, emit_s = self._emit
        t = self._t
        t_eb, t_sb, t_mm, t_bm = t["EB"], t["SB"], t["MM"], t["BM"]
        t_ss, t_es, t_be, t_me = t["SS"], t["ES"], t["BE"], t["ME"]
        first = obs[0]
        start_b, start_m, start_e, start_s = self._start
        v_b = start_b + emit_b.get(first, low)
        v_m = start_m + emit_m.get(first, low)
        v_e = start_e + emit_e.get(first, low)
        v_s = start_s + emit_s.get(first, low)
        back: list[tuple[str, str, str, str]] = []
        for char in obs[1:]:
            em_b, em_m = emit_b.get(char, low), emit_m.get(char, low)
            em_e, em_s = emit_e.get(char, low), emit_s.get(char, low)
            p_e, p_s = v_e + t_eb + em_b, v_s + t_sb + em_b
            n_b, b_b = (p_s, "S") if p_s >= p_e else (p_e, "E")
            p_m, p_b = v_m + t_mm + em_m, v_b + t_bm + em_m
            n_m, b_m = (p_m, "M") if p_m >= p_b else (p_b, "B")
            p_s2, p_e2 = v_s + t_ss + em_s, v_e + t_es + em_s
            n_s, b_s = (p_s2, "S") if p_s2 >= p_e2 else (p_e2, "E")
            p_m2, p_b2 = v_m + t_me + em_e, v_b + t_be + em_e
            n_e, b_e = (p_m2, "M") if p_m2 >= p_b2 else (p_b2, "B")
            back.append((b_b, b_m, b_e, b_s))
            v_b, v_m, v_e, v_s = n_b, n_m, n_e, n_s
        state = "S" if v_s >= v_e else "E"
        states = [state]
        index = {"B": 0, "M": 1, "E": 2, "S": 3}
        for pointers in reversed(back):
            state = pointers[index[state]]
            states.append(state)
        states.reverse()
        return states

    def _cut_han(self, run: str) -> list[str]:
        words: list[str] = []
        begin = next_start = 0
        for i, state in enumerate(self._states(run)):
            if state == "B":
                begin = i
            elif state == "E":
                words.append(run[begin : i + 1])
                next_start = i + 1
            elif state == "S":
                words.append(run[i])
                next_start = i + 1
        if next_start < len(run):
            words.append(run[next_start:])
        return words

    def __call__(self, text: str) -> list[str]:
        words: list[str] = []
        for block in self._han.split(text):
            if self._han.match(block):
                for word in self._cut_han(block):
                    if word in self._force_split:
                        words.extend(word)
                    else:
                        words.append(word)
            else:
                words.extend(x for x in self._skip.split(block) if x)
        return words
