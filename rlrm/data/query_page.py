"""The answer page for a query set: one static ``index.html`` (plain HTML/CSS/JS, no server, no network) that shows
each pair's two clips side by side, takes left / right / equal / skip from buttons or keys, keeps progress in the
browser's ``localStorage`` (keyed by the query set, so a reload resumes) and saves ``answers.jsonl``: the lines of
``queries.jsonl`` with their labels filled in (skipped and unanswered pairs keep a blank label, which
:func:`rlrm.data.preferences.read_preference_file` skips).
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from rlrm import atomic
from rlrm.data.preferences import SegmentPairs

STORAGE_PREFIX = "rlrm-queries:"


def page_data(pairs: SegmentPairs, clips: list[tuple[str, str]], set_id: str, title: str) -> dict[str, Any]:
    """What the page needs: the pairs (as in the JSONL), their clip paths (relative to the page) and the set id."""
    return {"id": set_id, "title": title, "storage_key": STORAGE_PREFIX + set_id, "pairs": [
        {"left": {"episode": int(pairs.left_episode[i]), "start": int(pairs.left_start[i])},
         "right": {"episode": int(pairs.right_episode[i]), "start": int(pairs.right_start[i])},
         "length": int(pairs.length[i]), "left_clip": clips[i][0], "right_clip": clips[i][1]}
        for i in range(len(pairs))]}


def render_page(data: dict[str, Any]) -> str:
    """The HTML of the page for :func:`page_data`'s ``data``."""
    payload = json.dumps(data, ensure_ascii=True).replace("<", "\\u003c").replace(">", "\\u003e")
    return (_TEMPLATE.replace("__TITLE__", html.escape(data["title"]))
            .replace("__DATA__", payload))


def write_query_page(folder: str | os.PathLike, pairs: SegmentPairs, clips: list[tuple[str, str]], set_id: str,
                     title: str) -> Path:
    """Write ``folder/index.html`` (atomically) for ``pairs`` whose clips are ``clips`` (paths relative to
    ``folder``).

    :param set_id: identifies the query set; the page keeps its progress under ``rlrm-queries:<set_id>``.
    :return: the page's path.
    """
    path = Path(folder) / "index.html"
    atomic.write_bytes(path, render_page(page_data(pairs, clips, set_id, title)).encode("utf-8"))
    return path


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.3rem; margin-bottom: .3rem; }
  .status { display: flex; gap: 1.5rem; flex-wrap: wrap; margin: .5rem 0 1rem; }
  .clips { display: flex; gap: 1.5rem; justify-content: center; flex-wrap: wrap; }
  figure { margin: 0; text-align: center; }
  figure img { border: 2px solid #bbb; image-rendering: auto; width: 240px; max-width: 42vw; background: #fff; }
  figure.chosen img { border-color: #1a7f37; box-shadow: 0 0 0 3px #1a7f3755; }
  figcaption { margin-top: .3rem; font-size: .9rem; }
  .answers, .nav { display: flex; gap: .6rem; justify-content: center; margin: 1rem 0; flex-wrap: wrap; }
  button { font-size: 1rem; padding: .5rem 1rem; border-radius: .4rem; border: 1px solid #888; background: #f6f6f6;
           cursor: pointer; }
  button[aria-pressed="true"] { background: #1a7f37; color: #fff; border-color: #1a7f37; }
  button:focus-visible { outline: 3px solid #0969da; outline-offset: 2px; }
  kbd { border: 1px solid #aaa; border-radius: 3px; padding: 0 .3em; font-size: .85em; background: #fafafa; }
  .help { color: #555; font-size: .9rem; text-align: center; }
  #message { min-height: 1.4em; text-align: center; color: #1a7f37; }
</style>
</head>
<body>
<h1>__TITLE__</h1>
<p>Which clip shows the better behaviour? Clips loop; answers are kept in this browser until you save them.</p>
<div class="status" aria-live="polite">
  <span id="position">Pair 1 of 1</span>
  <span id="progress">Answered 0 of 1</span>
  <span id="current-answer">Your answer: none</span>
</div>
<div class="clips">
  <figure id="left-figure">
    <img id="left-clip" alt="Left clip" src="">
    <figcaption>Left <span id="left-info"></span></figcaption>
  </figure>
  <figure id="right-figure">
    <img id="right-clip" alt="Right clip" src="">
    <figcaption>Right <span id="right-info"></span></figcaption>
  </figure>
</div>
<div class="answers" role="group" aria-label="Answer">
  <button type="button" id="answer-left" data-label="left" aria-label="Left is better (key 1 or left arrow)">
    &#9664; Left is better</button>
  <button type="button" id="answer-equal" data-label="equal" aria-label="Both are equally good (key 3 or up arrow)">
    Equal</button>
  <button type="button" id="answer-right" data-label="right" aria-label="Right is better (key 2 or right arrow)">
    Right is better &#9654;</button>
  <button type="button" id="answer-skip" data-label="skip" aria-label="Skip this pair (key s or down arrow)">
    Skip</button>
</div>
<div class="nav">
  <button type="button" id="previous" aria-label="Previous pair (key p)">&larr; Previous</button>
  <button type="button" id="next" aria-label="Next pair (key n)">Next &rarr;</button>
  <button type="button" id="save" aria-label="Save answers: download answers.jsonl">Save answers</button>
</div>
<p id="message" role="status"></p>
<p class="help">Keys: <kbd>1</kbd>/<kbd>&larr;</kbd> left, <kbd>2</kbd>/<kbd>&rarr;</kbd> right,
  <kbd>3</kbd>/<kbd>&uarr;</kbd> equal, <kbd>s</kbd>/<kbd>&darr;</kbd> skip, <kbd>p</kbd> previous,
  <kbd>n</kbd> next. Then <em>Save answers</em> and import the file with
  <code>python -m rlrm.train_reward --preferences answers.jsonl</code>.</p>
<script type="application/json" id="query-data">__DATA__</script>
<script>
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("query-data").textContent);
  const PAIRS = DATA.pairs;
  const N = PAIRS.length;
  const LABELS = ["left", "right", "equal", "skip"];
  const $ = (id) => document.getElementById(id);
  let state = { answers: new Array(N).fill(null), current: 0 };

  function load() {
    try {
      const saved = JSON.parse(window.localStorage.getItem(DATA.storage_key) || "null");
      if (saved && Array.isArray(saved.answers) && saved.answers.length === N) {
        state.answers = saved.answers.map((a) => (LABELS.includes(a) ? a : null));
        state.current = Math.min(Math.max(0, saved.current | 0), Math.max(0, N - 1));
      }
    } catch (err) {
      say("Progress cannot be kept in this browser (" + err + "); save answers before closing the page.");
    }
  }

  function store() {
    try {
      window.localStorage.setItem(DATA.storage_key, JSON.stringify(state));
    } catch (err) {
      say("Progress cannot be kept in this browser (" + err + "); save answers before closing the page.");
    }
  }

  function say(text) { $("message").textContent = text; }

  function steps(side, length) {
    return "(episode " + side.episode + ", steps " + side.start + "\\u2013" + (side.start + length - 1) + ")";
  }

  function show() {
    if (!N) { $("position").textContent = "No pairs in this query set"; return; }
    const pair = PAIRS[state.current];
    const answer = state.answers[state.current];
    $("left-clip").src = pair.left_clip;
    $("right-clip").src = pair.right_clip;
    $("left-clip").alt = "Left clip of pair " + (state.current + 1);
    $("right-clip").alt = "Right clip of pair " + (state.current + 1);
    $("left-info").textContent = steps(pair.left, pair.length);
    $("right-info").textContent = steps(pair.right, pair.length);
    $("position").textContent = "Pair " + (state.current + 1) + " of " + N;
    const answered = state.answers.filter((a) => a === "left" || a === "right" || a === "equal").length;
    const skipped = state.answers.filter((a) => a === "skip").length;
    $("progress").textContent = "Answered " + answered + " of " + N + (skipped ? " (" + skipped + " skipped)" : "");
    $("current-answer").textContent = "Your answer: " + (answer || "none");
    for (const button of document.querySelectorAll("button[data-label]")) {
      button.setAttribute("aria-pressed", String(button.dataset.label === answer));
    }
    $("left-figure").classList.toggle("chosen", answer === "left" || answer === "equal");
    $("right-figure").classList.toggle("chosen", answer === "right" || answer === "equal");
    $("previous").disabled = state.current === 0;
    $("next").disabled = state.current >= N - 1;
    if (state.current + 1 < N) { new Image().src = PAIRS[state.current + 1].left_clip;
                                 new Image().src = PAIRS[state.current + 1].right_clip; }
  }

  function answer(label) {
    if (!N) return;
    state.answers[state.current] = label;
    if (state.current < N - 1) state.current += 1;
    if (state.answers.every((a) => a !== null)) say("All pairs seen: save your answers.");
    store();
    show();
  }

  function go(delta) {
    state.current = Math.min(Math.max(0, state.current + delta), Math.max(0, N - 1));
    store();
    show();
  }

  function side(s) { return '{"episode": ' + s.episode + ', "start": ' + s.start + "}"; }

  function answersJsonl() {
    return PAIRS.map((p, i) => {
      const a = state.answers[i];
      const label = a === "left" || a === "right" || a === "equal" ? a : "";
      return '{"left": ' + side(p.left) + ', "right": ' + side(p.right) + ', "length": ' + p.length +
        ', "label": "' + label + '"}\\n';
    }).join("");
  }

  function save() {
    const blob = new Blob([answersJsonl()], { type: "application/x-ndjson" });
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = "answers.jsonl";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    const n = state.answers.filter((a) => a === "left" || a === "right" || a === "equal").length;
    say("Saved answers.jsonl with " + n + " answer" + (n === 1 ? "" : "s") + ".");
  }

  for (const button of document.querySelectorAll("button[data-label]")) {
    button.addEventListener("click", () => answer(button.dataset.label));
  }
  $("previous").addEventListener("click", () => go(-1));
  $("next").addEventListener("click", () => go(1));
  $("save").addEventListener("click", save);
  const KEYS = { "1": "left", "ArrowLeft": "left", "2": "right", "ArrowRight": "right", "3": "equal",
                 "ArrowUp": "equal", "s": "skip", "ArrowDown": "skip" };
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (KEYS[event.key]) { event.preventDefault(); answer(KEYS[event.key]); }
    else if (event.key === "n") go(1);
    else if (event.key === "p") go(-1);
  });
  window.rlrmAnswersJsonl = answersJsonl;  // for scripted checks
  load();
  show();
})();
</script>
</body>
</html>
"""
