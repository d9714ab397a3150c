"""VQAv2 soft accuracy with the official answer normalisation, and per-type summaries.

    acc(a) = mean over the 10 leave-one-annotator-out subsets of min(#matches among the 9 / 3, 1)

so an answer given by 4+ of 10 annotators scores 1, by 3 → 0.9, by 2 → 0.6, by 1 → 0.3. Answers are normalised as the official evaluation does:
whitespace, punctuation (kept inside numbers), the period rule, number words → digits,
articles dropped, common contractions restored.
"""

from __future__ import annotations

import re
from collections import defaultdict

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
# apostrophe-less spellings people type → the canonical contraction
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "couldve": "could've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id": "I'd", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "its": "it's",
    "lets": "let's", "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "oclock": "o'clock", "shant": "shan't", "shed": "she'd", "shes": "she's",
    "shouldnt": "shouldn't", "shouldve": "should've", "thats": "that's", "thered": "there'd",
    "theres": "there's", "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "wasnt": "wasn't", "wed": "we'd", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldnt": "wouldn't", "wouldve": "would've", "yall": "y'all", "youd": "you'd", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")


def _punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:
        # glued to a word ("yes!") the mark goes; between words ("black/white") it becomes a space
        if (p + " " in text or " " + p in text) or _COMMA_IN_NUMBER.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _digits_and_articles(text: str) -> str:
    words = []
    for w in text.lower().split():
        w = NUMBER_WORDS.get(w, w)
        if w not in ARTICLES:
            words.append(CONTRACTIONS.get(w, w))
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_and_articles(_punctuation(answer))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQAv2 soft accuracy of one prediction against the annotators' answers (usually 10)."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one annotator answer")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    if len(gts) == 1:
        return float(pred == gts[0])
    scores = []
    for i in range(len(gts)):
        matches = sum(g == pred for j, g in enumerate(gts) if j != i)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def summarize(records: list[dict]) -> dict:
    """records: {"prediction", "answers", "answer", "question_type", "answer_type"} per question.
    Accuracy overall / per question type / per answer type (×100, as VQAv2 reports), and for
    yes/no questions precision, recall, F1 of "yes" and the predicted yes-ratio (POPE style)."""
    if not records:
        raise ValueError("no records to summarise")
    by_q, by_a = defaultdict(list), defaultdict(list)
    overall = []
    for r in records:
        acc = vqa_accuracy(r["prediction"], r["answers"])
        overall.append(acc)
        by_q[r["question_type"]].append(acc)
        by_a[r["answer_type"]].append(acc)
    mean = lambda v: 100 * sum(v) / len(v)  # noqa: E731
    out = {"overall": mean(overall), "count": len(records),
           "per_question_type": {k: mean(v) for k, v in sorted(by_q.items())},
           "per_answer_type": {k: mean(v) for k, v in sorted(by_a.items())}}
    yn = [r for r in records if r["answer_type"] == "yes/no"]
    if yn:
        pred_yes = [normalize_answer(r["prediction"]) == "yes" for r in yn]
        true_yes = [normalize_answer(r["answer"]) == "yes" for r in yn]
        tp = sum(p and t for p, t in zip(pred_yes, true_yes))
        precision = tp / max(1, sum(pred_yes))
        recall = tp / max(1, sum(true_yes))
        out["yes_no"] = {"precision": precision, "recall": recall,
                         "f1": 2 * precision * recall / max(1e-12, precision + recall),
                         "yes_ratio": sum(pred_yes) / len(yn)}
    return out
