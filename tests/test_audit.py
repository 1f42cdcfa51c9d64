"""charter audit (issue 15): every detector on fixtures made here, in English and Chinese, each with a case it must
flag and a clean case it must not — so a detector that did nothing (or flagged everything) fails."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from charter.audit import checks
from charter.audit.findings import AuditConfig
from charter.audit.load import load_items
from charter.audit.run import audit_files, audit_run_inputs

CFG = AuditConfig()
EN_WORDS = [
    "river", "market", "council", "winter", "garden", "teacher", "harbour", "engine", "village", "bridge",
    "festival", "library", "season", "farmer", "railway", "museum", "storm", "orchard", "factory", "island"
]
EN_VERBS = ["opened", "closed", "visited", "repaired", "painted", "crossed", "praised", "measured"]
ZH_NOUNS = ["城市", "河流", "学校", "医院", "公园", "工厂", "农民", "老师", "图书馆",
            "铁路", "博物馆", "花园", "市场", "桥梁", "村庄", "港口", "季节", "节日"]
ZH_VERBS = ["参观了", "修好了", "打开了", "关闭了", "描述了", "称赞了", "测量了", "穿过了"]


def en_sentence(r: random.Random) -> str:
    a, b = r.sample(EN_WORDS, 2)
    return f"The {a} near the {b} was {r.choice(EN_VERBS)} by {r.randint(2, 900)} people on day {r.randint(1, 28)}."


def zh_sentence(r: random.Random) -> str:
    a, b = r.sample(ZH_NOUNS, 2)
    return f"{a}附近的{b}在第{r.randint(1, 28)}天被{r.randint(2, 900)}个人{r.choice(ZH_VERBS)}。"


def paragraph(r: random.Random, lang: str, n: int = 3) -> str:
    make = en_sentence if lang == "en" else zh_sentence
    return ("" if lang == "zh" else " ").join(make(r) for _ in range(n))


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def finding(audit: dict[str, Any], check: str, file: int = 0) -> dict[str, Any]:
    return next(f for f in audit["files"][file]["findings"] if f["check"] == check)


# --- loading -------------------------------------------------------------------------------------------------------

def test_records_keep_the_files_real_line_numbers_and_every_duplicate(tmp_path: Path) -> None:
    f = tmp_path / "mixed.jsonl"
    f.write_text('{"prompt": "first"}\n\n{"prompt": "first"}\nnot json\n'
                 '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
                 '{"prompt": "p", "chosen": "\\n\\nHuman: p\\n\\nAssistant: yes", "rejected": "no"}\n')
    ld = load_items(f)
    assert [(i.line, i.kind) for i in ld.items] == [(1, "prompt"), (3, "prompt"), (5, "sft"), (6, "preference")]
    assert ld.skipped[0][0] == 4 and ld.kind == "preference"
    assert ld.items[3].answers == {"chosen": "yes", "rejected": "no"}
    c = tmp_path / "p.csv"
    c.write_text('id,prompt\n1,"a prompt\nover two lines"\n2,second\n')
    assert [i.line for i in load_items(c).items] == [2, 4]


# --- duplicates ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["en", "zh"])
def test_an_article_duplicated_under_a_new_headline_is_a_near_duplicate(tmp_path: Path, lang: str) -> None:
    r = random.Random(7)
    articles = [{"text": f"Headline {k}\n\n" + "\n\n".join(paragraph(r, lang, 4) for _ in range(3))}
                for k in range(12)]
    body = articles[4]["text"].split("\n\n", 1)[1]
    new_head = "Shocking news you will not believe" if lang == "en" else "震惊！你绝对想不到的消息"
    articles.append({"text": f"{new_head}\n\n{body}"})
    articles.append(dict(articles[2]))  # and one exact copy
    audit = audit_files([write_jsonl(tmp_path / f"{lang}.jsonl", [{"prompt": a["text"]} for a in articles])])
    near, exact = finding(audit, "near_duplicates"), finding(audit, "exact_duplicates")
    assert near["lines"] == [13] and near["examples"][0]["detail"]["like"] == 5
    assert near["examples"][0]["detail"]["jaccard"] >= 0.7
    assert exact["lines"] == [14] and exact["detail"]["same_as"] == {"14": 3}


def test_minhash_lsh_finds_the_pairs_exact_jaccard_would() -> None:
    from charter.audit.text import jaccard, near_duplicate_pairs, shingles

    r = random.Random(3)
    texts = [paragraph(r, "en", 5) for _ in range(40)]
    texts += [t.replace("people", "persons", 1) for t in texts[:10]]  # 10 light edits
    sets = [shingles(t) for t in texts]
    brute = {(i, j) for i in range(len(sets)) for j in range(i + 1, len(sets)) if jaccard(sets[i], sets[j]) >= 0.7}
    assert len(brute) == 10
    assert {(i, j) for i, j, _ in near_duplicate_pairs(sets, 0.7)} == brute


# --- boilerplate ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lang,mark", [
    ("en", "(Reposted from the Harbour Ledger, harbourledger.example — all rights reserved)"),
    ("zh", "【本文转载自港口日报 gangkou-ribao.example，版权归原作者所有】"),
])
def test_a_watermark_suffix_on_every_paragraph_is_found_and_stripped_by_fix(tmp_path: Path, lang: str,
                                                                             mark: str) -> None:
    r = random.Random(11)
    sep = " " if lang == "en" else ""
    records = [{"id": f"r{k}", "prompt": "\n\n".join(paragraph(r, lang) + sep + mark for _ in range(3))}
               for k in range(10)]
    clean = [{"id": f"c{k}", "prompt": paragraph(r, lang)} for k in range(3)]  # a few without it
    path = write_jsonl(tmp_path / "corpus.jsonl", records + clean)
    audit = audit_files([path], fix=tmp_path / "fixed")
    bp = finding(audit, "boilerplate")
    assert [a["text"] for a in bp["detail"]["affixes"]] == [mark]
    assert bp["detail"]["affixes"][0]["position"] == "suffix" and bp["lines"] == list(range(1, 11))
    fixed = [json.loads(x) for x in (tmp_path / "fixed" / "corpus.jsonl").read_text().splitlines()]
    assert len(fixed) == 13 and not any(mark in x["prompt"] for x in fixed)
    assert fixed[0]["prompt"].count("\n\n") == 2 and fixed[0]["prompt"].endswith(("。", "."))
    assert fixed[10:] == clean  # untouched
    changes = json.loads((tmp_path / "fixed" / "changes.json").read_text())[0]["changes"]
    assert changes == [{"line": n, "action": "strip", "text": mark, "times": 3} for n in range(1, 11)]


def test_prose_with_no_watermark_has_no_boilerplate(tmp_path: Path) -> None:
    r = random.Random(5)
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": paragraph(r, lang)} for lang in ("en", "zh") * 15])
    bp = finding(audit_files([path]), "boilerplate")
    assert bp["count"] == 0 and bp["detail"]["affixes"] == []


def test_a_boilerplate_prefix_is_found_too() -> None:
    r = random.Random(2)
    units = [f"BREAKING NEWS from the wire desk: {paragraph(r, 'en')}" for _ in range(8)] + \
        [paragraph(r, "en") for _ in range(4)]
    assert checks.find_affixes(units, CFG) == [{"position": "prefix", "text": "BREAKING NEWS from the wire desk:",
                                               "paragraphs": 8, "share": round(8 / 12, 3)}]


# --- spam, encoding, scripts ---------------------------------------------------------------------------------------

def test_spam_signals_flag_link_farms_and_keyword_stuffing_not_prose() -> None:
    r = random.Random(1)
    farm = "Best deals: http://a.example/x http://b.example/y visit www.c-example.com/z now"
    stuffed_zh = "便宜手机 " * 6 + "这里买最好。"
    assert "links" in checks.spam_signals(farm)
    assert checks.spam_signals(stuffed_zh)["stuffing"]["ngram"].replace(" ", "") .startswith("便宜手机")
    assert checks.spam_signals("!!!!!!!! CALL NOW, THIS OFFER ENDS TONIGHT FOR EVERYONE WHO READS IT") != {}
    for lang in ("en", "zh"):
        assert checks.spam_signals(paragraph(r, lang, 5)) == {}


def test_mojibake_replacement_chars_and_invisible_marks_are_encoding_damage(tmp_path: Path) -> None:
    latin = "naïve café résumé".encode().decode("cp1252")  # UTF-8 read as cp1252: 'naÃ¯ve cafÃ©'
    gbk_ffd = "\ufffd\ufffd".encode().decode("gbk")  # the classic 锟斤拷
    assert [fixed for _, fixed in checks.mojibake(latin)] == ["ï", "é", "é", "é"]
    assert gbk_ffd == "锟斤拷" and checks.mojibake(gbk_ffd)
    assert checks.mojibake("naïve café — 北京的文本编码很正常。") == []
    path = write_jsonl(tmp_path / "e.jsonl", [{"prompt": p} for p in (
        latin, "plain words", "bad \ufffd byte", gbk_ffd, "zero\u200bwidth", "北京的天气很好。")])
    enc = finding(audit_files([path]), "encoding")
    assert enc["lines"] == [1, 3, 4, 5]


def test_words_that_mix_scripts_are_flagged_but_chinese_next_to_latin_is_not() -> None:
    spoof = "Log in to your p\u0430ypal account"  # Cyrillic а
    assert checks.mixed_words(spoof) == [("p\u0430ypal", ["Cyrillic", "Latin"])]
    assert checks.mixed_words("我用Python写代码，Дмитрий and Zoë too") == []


def test_script_mix_names_each_records_script_and_flags_mixed_records(tmp_path: Path) -> None:
    r = random.Random(4)
    mixed = paragraph(r, "en", 2) + " " + paragraph(r, "zh", 2)
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": paragraph(r, "en")}, {"prompt": paragraph(r, "zh")},
                                              {"prompt": mixed}])
    audit = audit_files([path])
    assert audit["files"][0]["scripts"] == {"Latin": 2, "Han": 1}
    assert finding(audit, "script_mix")["lines"] == [3]


# --- prompt hygiene ------------------------------------------------------------------------------------------------

def test_chat_template_tokens_and_answer_leaks_are_found(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [{"role": "user", "content": "What is 2+2? <|im_end|>\n<|im_start|>assistant"},
                      {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": "Translate: cat\nAnswer: chat"},
                      {"role": "assistant", "content": "chat"}]},
        {"messages": [{"role": "user", "content": "请计算三加四。答案：七"}, {"role": "assistant", "content": "七"}]},
        {"messages": [{"role": "user", "content": "Summarise: the river council opened the new bridge on day "
                                                  "three and the village held a festival."},
                      {"role": "assistant", "content": "the river council opened the new bridge on day three and "
                                                       "the village held a festival."}]},
        {"messages": [{"role": "user", "content": "How long do I boil an egg?"},
                      {"role": "assistant", "content": "About seven minutes for a firm yolk."}]},
    ])
    audit = audit_files([path])
    tt = finding(audit, "template_tokens")
    assert tt["lines"] == [1] and set(tt["examples"][0]["detail"]["tokens"]) == {"<|im_end|>", "<|im_start|>"}
    leaks = finding(audit, "answer_leaks")
    assert leaks["lines"] == [2, 3, 4]
    assert [e["detail"]["kind"] for e in leaks["examples"]] == ["label_in_prompt", "label_in_prompt",
                                                                "answer_in_prompt"]


# --- contamination -------------------------------------------------------------------------------------------------

def test_train_eval_overlap_is_reported_with_both_line_numbers(tmp_path: Path) -> None:
    r = random.Random(9)
    long_en = " ".join(en_sentence(r) for _ in range(3))
    train = [{"prompt": "How do I make a simple tomato sauce?"},
             {"prompt": "如何在家里做一碗简单的番茄鸡蛋面？"},
             {"prompt": "Tell me a story.", "chosen": f"Sure. {long_en}", "rejected": "No."},
             *({"prompt": paragraph(r, "en")} for _ in range(5))]
    evals = [("e1", "how do I make a SIMPLE tomato   sauce?"),  # same prompt, other case/space
             ("e2", "如何在家里做一碗简单的番茄鸡蛋面呢？"),  # near-duplicate (Chinese)
             ("e3", long_en.split(". ")[1] + ". " + long_en.split(". ")[2]),  # inside a training answer
             ("e4", "What is the capital of Australia?"),  # clean
             ("e5", "请介绍一下长城的历史。")]  # clean
    tpath = write_jsonl(tmp_path / "train.jsonl", train)
    epath = tmp_path / "eval.csv"
    with epath.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt"])
        w.writerows(evals)
    audit = audit_files([tpath], [epath])
    (o,) = audit["overlaps"]
    got = {e["line"]: (e["detail"]["kind"], e["detail"]["train_line"]) for e in o["examples"]}
    assert o["lines"] == [2, 3, 4]
    assert got[2] == ("exact", 1) and got[3] == ("near", 2) and got[4][1] == 3
    assert got[4][0] in ("13-gram", "contained")


# --- tokenizer -----------------------------------------------------------------------------------------------------

def _tiny_model(tmp_path: Path, planted: list[str], untrained_rows: bool) -> tuple[Path, dict[str, int], list[str]]:
    """A byte-level BPE tokenizer trained here, with ``planted`` long phrases added as tokens, and a tiny random
    Llama whose embedding rows for the planted tokens (and for bytes UTF-8 never uses) look under-trained."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    r = random.Random(0)
    corpus = [paragraph(r, lang, 4) for lang in ("en", "zh") * 60]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ordinary = "图书馆附近的博物馆"  # long, added, but in the corpus and trained
    corpus.append(f"{ordinary}很大。" * 3)
    tok.add_tokens([AddedToken(t, normalized=False) for t in [*planted, ordinary]])
    folder = tmp_path / "model"
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    ids = {t: tok.token_to_id(t) for t in [*planted, ordinary]}
    from charter.audit.tokenizer import never_utf8_tokens

    with torch.no_grad():
        e = model.model.embed_tokens.weight
        e.normal_(0, 1.0)  # "trained" rows: spread out
        if untrained_rows:
            start = torch.randn(32) * 0.05  # rows training never moved stay near where they started
            for i in [ids[t] for t in planted] + sorted(never_utf8_tokens(tok)):
                e[i] = start + 0.01 * torch.randn(32)
    model.save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return folder, ids, corpus


PLANTED = ["幸运宫殿免费送积分今晚就来", "win free credits tonight at lucky palace"]


def test_planted_long_spam_tokens_with_under_trained_rows_are_flagged(tmp_path: Path) -> None:
    from charter.audit.tokenizer import audit_tokenizer

    folder, ids, corpus = _tiny_model(tmp_path, PLANTED, untrained_rows=True)
    t = audit_tokenizer(str(folder), CFG)  # no corpus: the weights alone
    flagged = {x["id"] for x in t["flagged"]}
    assert flagged == {ids[p] for p in PLANTED}
    assert {ids[p] for p in PLANTED} <= {x["id"] for x in t["under_trained_tokens"]}
    assert t["weights"]["embedding"]["signal"] == "indicator_z" and t["weights"]["reference_tokens"] == 13
    assert t["scripts"]["Han"]["longest"][0]["text"] == PLANTED[0]
    assert t["scripts"]["Latin"]["longest"][0]["text"] == PLANTED[1]
    assert t["scripts"]["Han"]["share"] > 0 and abs(sum(s["share"] for s in t["scripts"].values()) - 1) < 0.01


def test_planted_tokens_are_flagged_from_a_reference_corpus_alone_and_a_clean_vocab_is_not(tmp_path: Path) -> None:
    from charter.audit.tokenizer import audit_tokenizer

    folder, ids, corpus = _tiny_model(tmp_path, PLANTED, untrained_rows=False)
    (folder / "model.safetensors").unlink()  # tokenizer only
    t = audit_tokenizer(str(folder), CFG, corpus)
    assert {x["id"] for x in t["flagged"]} == {ids[p] for p in PLANTED}
    assert all(x["corpus_count"] == 0 for x in t["flagged"])
    clean, _, corpus2 = _tiny_model(tmp_path / "clean", [], untrained_rows=False)
    assert audit_tokenizer(str(clean), CFG, corpus2)["flagged"] == []


# --- CLI, pipeline and report --------------------------------------------------------------------------------------

def test_cli_audits_fixes_and_writes_audit_json(tmp_path: Path) -> None:
    from charter.cli import cli

    mark = "【来源：示例资讯网 shili.example】"
    r = random.Random(8)
    rows = [{"prompt": paragraph(r, "zh") + mark} for _ in range(6)]
    path = write_jsonl(tmp_path / "d.jsonl", [*rows, rows[0]])
    res = CliRunner().invoke(cli, ["audit", str(path), "--fix", str(tmp_path / "out"), "-o", str(tmp_path / "run"),
                                   "--set", "near_threshold=0.9"])
    assert res.exit_code == 0, res.output
    assert "exact_duplicates: 1 records" in res.output and mark in res.output
    audit = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert audit["config"]["near_threshold"] == 0.9 and audit["fix"][0]["dropped"] == 1
    cleaned = (tmp_path / "out" / "d.jsonl").read_text()
    assert cleaned.count("\n") == 6 and mark not in cleaned
    bad = CliRunner().invoke(cli, ["audit", str(path), "--set", "near_threshold=2"])
    assert bad.exit_code != 0 and "near_threshold" in bad.output


def test_run_config_audit_enabled_writes_audit_json_and_warns_without_dropping(tmp_path: Path) -> None:
    from charter.config import load_config

    r = random.Random(6)
    rows = [{"prompt": en_sentence(r)} for _ in range(5)]
    path = write_jsonl(tmp_path / "p.jsonl", [*rows, rows[1]])
    cfg = load_config(None, [f"prompts.red_team={path}", "prompts.helpful=", "audit.enabled=true"])
    logged: list[str] = []
    warns = audit_run_inputs(cfg, tmp_path / "run", log=logged.append)
    assert warns and "exact" in warns[0] and "lines 6" in warns[0] and logged[0].startswith("[audit] ")
    assert (tmp_path / "run" / "audit.json").is_file()
    off = load_config(None, [f"prompts.red_team={path}"])
    assert audit_run_inputs(off, tmp_path / "run2") == [] and not (tmp_path / "run2").exists()


def test_the_report_renders_an_audit_section_from_audit_json(tmp_path: Path) -> None:
    from charter.audit.run import write_audit
    from charter.report.report import build_report

    r = random.Random(6)
    rows = [{"prompt": en_sentence(r)} for _ in range(5)]
    path = write_jsonl(tmp_path / "p.jsonl", [*rows, rows[1]])
    write_audit(audit_files([path]), tmp_path / "run" / "audit.json")
    html = build_report(tmp_path / "run").read_text()
    assert 'id="audit"' in html and "exact_duplicates" in html and "repeat an earlier record" in html
