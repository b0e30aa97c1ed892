"""SimMe's shared logic, one module per responsibility (see docs/architecture.md).

`import simme_common as sc` gives the names the stage scripts, the app, tests and benchmarks use. Importing it
does no work: no torch, no transformers, no disk, network or environment access (those happen inside the
functions that need them).
"""

from __future__ import annotations

from .runtime import (
    library_versions, git_commit, save_run_config, UserError, run_main, cpu_threads, simme_cache_dir,
    process_peak_memory_mb, load_script,
)
from .tables import (
    format_number, format_metric, print_table, format_grid,
)
from .chat_format import (
    MESSAGES, OWNER_ROLE, OTHER_ROLE, CHAT_TYPES, BUBBLE_DELIMITER, SILENT_REPLY, SYSTEM_PROMPT_BASE,
    build_system_prompt, format_user_turn, split_bubbles, CHATML_TRAINING_TEMPLATE, LLAMA3_TRAINING_TEMPLATE,
    training_chat_template, end_of_turn_token, ensure_training_template, split_target, chat_token_ids,
    stop_token_ids, trim_context,
)
from .stage_io import (
    PREPARED_DIR, ANALYSIS_DIR, ADAPTER_DIR, EVAL_DIR, load_prepared_dataset, check_owner_turns,
    append_to_disk_dataset, carry_entries, replace_dir, atomic_output_dir, feedback_usage,
)
from .models import (
    DEFAULT_BASE_MODEL, bundled_gguf_path, convert_gguf_to_hf, resolve_base_model, load_tokenizer, AdapterRef,
    resolve_adapter, adapter_base_model, load_twin_tokenizer, load_model,
)
from .analysis import (
    FEATURE_COLUMNS, owner_turns, chat_labels, add_local_time, volume_stats, time_stats, word_stats,
    language_stats, sentiment_stats, owner_name, analyze_messages,
)
from .eval_generation import (
    eval_example, score_and_generate, perplexity_from_nll, generate_replies,
)
from .export import (
    DROP_REASONS, REPAIR_REASONS, parse_thread_documents, parse_export, merge_thread_records, infer_owner,
)
from .export_files import (
    EXPORT_SECTIONS, IngestLimits, discover_export, json_too_deep, read_entry_bytes, redact_path,
    entry_display_path, detect_file_kind, sanitize_header, DocumentError, load_json_document,
    instagram_old_to_documents, read_thread_group, iter_thread_groups,
)
from .metric_defs import (
    METRIC_KEYS, METRIC_DEFINITIONS, SEED_CLAIMS, CI_METRICS, GATE_TOLERANCES, PII_PROBES, MEMORIZATION_SPAN,
)
from .metrics import (
    sentiment_alignments, language_matches, bleu_statistics, bleu_from_statistics, rouge_l_scores,
    load_text_encoder, encode_texts, bertscore_f1, repetition_scores, memorization_index, memorized,
    pii_probe_contexts, bootstrap_ci, score_replies,
)
from .pii import (
    DEFAULT_KEY_FILE, KEY_BYTES, PII_KINDS, load_or_create_key, is_vietnamese_name, Anonymizer,
)
from .pii_detect import (
    classify_number, detect_pii, find_pii,
)
from .plots import (
    WEEKDAYS, LANGUAGE_COLORS, PUNCTUATION_KEYS, plot_label, plot_volume_monthly, plot_top_chats,
    plot_heatmap_weekday_hour, plot_reply_latency, plot_length_per_message, plot_bubbles_per_turn,
    plot_top_words, plot_language_mix, plot_sentiment_over_time, plot_punctuation, draw_plots,
)
from .prepare import (
    messages_schema, samples_schema, group_thread_parts, resolve_owner, SampleSettings, ThreadSamples,
    build_thread_samples, IngestTally, ingest_report, ingest_summary_rows,
)
from .samples import (
    split_sessions, group_bursts, pack_windows, silent_cut_points, render_lengths, truncate_to_tokens,
    split_by_time,
)
from .scorecard import (
    compare_scorecards, scorecard_rows, scorecard_markdown,
)
from .serving.access import (
    looks_like_hub_id, allowed_adapter_dir, needs_hub,
)
from .serving.chat_ui import (
    auto_temperature, SILENT_NOTE, message_text, flatten_history, expand_turns, parse_auth, build_app_messages,
    CONTROL_TOKEN_RE, ZERO_WIDTH_SPACE, neutralize_control_tokens, clip_text, clip_number, cap_history,
    public_message, LoginThrottle, stream_bubbles, parse_names, rank_contacts, typing_gap_seconds, reply_span,
    is_blind_testable, new_blind_round, score_guess, format_score,
)
from .serving.gguf_export import (
    GGUF_FTYPES, DEFAULT_GGUF_QUANT, AMX_GGUF_QUANT, gguf_export_key, write_llama_gguf, export_twin_gguf,
    prune_gguf_cache, default_gguf_quant,
)
from .serving.llama_cpp import (
    LLAMA_CPP_AMX_FIX, LLAMA_CPP_FA_PREFILL, LLAMA_CPP_AMX_BF16, AMX_BF16_MIN_TOKENS, LlamaCppOptions,
    llama_cpp_extra_bufts, llama_cpp_amx_usable, amx_bf16_min_tokens, llama_cpp_weight_buffers, repack_pattern,
)
from .serving.loader import (
    load_twin, load_twin_transformers,
)
from .serving.model_thread import (
    ModelThread,
)
from .serving.twin import (
    reply_cache_key, common_prefix_len, TwinModel,
)
from .settings import (
    AppSettings, ENV_NAMES, is_loopback,
)
from .style_card import (
    build_style_card, scorable_reply, reply_style_card, emoji_profile, style_similarity,
)
from .system_text import (
    classify_system_text, has_surrogates, remove_surrogates, fix_mojibake, normalize_text,
)
from .text_features import (
    LENGTH_CHAR_EDGES, LENGTH_WORD_EDGES, TYPING_GAP_EDGES, QUANTILES, MAX_BUBBLES_BIN, URL_PATTERN,
    extract_emojis, tokenize_words, vi_letters, strip_diacritics, detect_language, sentiment_score,
    textblob_polarity, histogram_probs, distribution_similarity, text_style_flags, punctuation_profile,
    message_features, quantiles, describe_distribution, lexical_diversity, bubbles_distribution, language_mix,
    code_switch_rate, stop_words,
)
from .training import (
    trained_segments, device_option_problem,
)

__all__ = [
    "library_versions", "git_commit", "save_run_config", "UserError", "run_main", "cpu_threads",
    "simme_cache_dir", "process_peak_memory_mb", "load_script", "format_number", "format_metric", "print_table",
    "format_grid", "MESSAGES", "OWNER_ROLE", "OTHER_ROLE", "CHAT_TYPES", "BUBBLE_DELIMITER", "SILENT_REPLY",
    "SYSTEM_PROMPT_BASE", "build_system_prompt", "format_user_turn", "split_bubbles",
    "CHATML_TRAINING_TEMPLATE", "LLAMA3_TRAINING_TEMPLATE", "training_chat_template", "end_of_turn_token",
    "ensure_training_template", "split_target", "chat_token_ids", "stop_token_ids", "trim_context",
    "PREPARED_DIR", "ANALYSIS_DIR", "ADAPTER_DIR", "EVAL_DIR", "load_prepared_dataset", "check_owner_turns",
    "append_to_disk_dataset", "carry_entries", "replace_dir", "atomic_output_dir", "feedback_usage",
    "DEFAULT_BASE_MODEL", "bundled_gguf_path", "convert_gguf_to_hf", "resolve_base_model", "load_tokenizer",
    "AdapterRef", "resolve_adapter", "adapter_base_model", "load_twin_tokenizer", "load_model",
    "FEATURE_COLUMNS", "owner_turns", "chat_labels", "add_local_time", "volume_stats", "time_stats",
    "word_stats", "language_stats", "sentiment_stats", "owner_name", "analyze_messages", "eval_example",
    "score_and_generate", "perplexity_from_nll", "generate_replies", "DROP_REASONS", "REPAIR_REASONS",
    "parse_thread_documents", "parse_export", "merge_thread_records", "infer_owner", "EXPORT_SECTIONS",
    "IngestLimits", "discover_export", "json_too_deep", "read_entry_bytes", "redact_path", "entry_display_path",
    "detect_file_kind", "sanitize_header", "DocumentError", "load_json_document", "instagram_old_to_documents",
    "read_thread_group", "iter_thread_groups", "METRIC_KEYS", "METRIC_DEFINITIONS", "SEED_CLAIMS", "CI_METRICS",
    "GATE_TOLERANCES", "PII_PROBES", "MEMORIZATION_SPAN", "sentiment_alignments", "language_matches",
    "bleu_statistics", "bleu_from_statistics", "rouge_l_scores", "load_text_encoder", "encode_texts",
    "bertscore_f1", "repetition_scores", "memorization_index", "memorized", "pii_probe_contexts",
    "bootstrap_ci", "score_replies", "DEFAULT_KEY_FILE", "KEY_BYTES", "PII_KINDS", "load_or_create_key",
    "is_vietnamese_name", "Anonymizer", "classify_number", "detect_pii", "find_pii", "WEEKDAYS",
    "LANGUAGE_COLORS", "PUNCTUATION_KEYS", "plot_label", "plot_volume_monthly", "plot_top_chats",
    "plot_heatmap_weekday_hour", "plot_reply_latency", "plot_length_per_message", "plot_bubbles_per_turn",
    "plot_top_words", "plot_language_mix", "plot_sentiment_over_time", "plot_punctuation", "draw_plots",
    "messages_schema", "samples_schema", "group_thread_parts", "resolve_owner", "SampleSettings",
    "ThreadSamples", "build_thread_samples", "IngestTally", "ingest_report", "ingest_summary_rows",
    "split_sessions", "group_bursts", "pack_windows", "silent_cut_points", "render_lengths",
    "truncate_to_tokens", "split_by_time", "compare_scorecards", "scorecard_rows", "scorecard_markdown",
    "looks_like_hub_id", "allowed_adapter_dir", "needs_hub", "auto_temperature", "SILENT_NOTE", "message_text",
    "flatten_history", "expand_turns", "parse_auth", "build_app_messages", "CONTROL_TOKEN_RE",
    "ZERO_WIDTH_SPACE", "neutralize_control_tokens", "clip_text", "clip_number", "cap_history",
    "public_message", "LoginThrottle", "stream_bubbles", "parse_names", "rank_contacts", "typing_gap_seconds",
    "reply_span", "is_blind_testable", "new_blind_round", "score_guess", "format_score", "GGUF_FTYPES",
    "DEFAULT_GGUF_QUANT", "AMX_GGUF_QUANT", "gguf_export_key", "write_llama_gguf", "export_twin_gguf",
    "prune_gguf_cache", "default_gguf_quant", "LLAMA_CPP_AMX_FIX", "LLAMA_CPP_FA_PREFILL", "LLAMA_CPP_AMX_BF16",
    "AMX_BF16_MIN_TOKENS", "LlamaCppOptions", "llama_cpp_extra_bufts", "llama_cpp_amx_usable",
    "amx_bf16_min_tokens", "llama_cpp_weight_buffers", "repack_pattern", "load_twin", "load_twin_transformers",
    "ModelThread", "reply_cache_key", "common_prefix_len", "TwinModel", "AppSettings", "ENV_NAMES",
    "is_loopback", "build_style_card", "scorable_reply", "reply_style_card", "emoji_profile",
    "style_similarity", "classify_system_text", "has_surrogates", "remove_surrogates", "fix_mojibake",
    "normalize_text", "LENGTH_CHAR_EDGES", "LENGTH_WORD_EDGES", "TYPING_GAP_EDGES", "QUANTILES",
    "MAX_BUBBLES_BIN", "URL_PATTERN", "extract_emojis", "tokenize_words", "vi_letters", "strip_diacritics",
    "detect_language", "sentiment_score", "textblob_polarity", "histogram_probs", "distribution_similarity",
    "text_style_flags", "punctuation_profile", "message_features", "quantiles", "describe_distribution",
    "lexical_diversity", "bubbles_distribution", "language_mix", "code_switch_rate", "stop_words",
    "trained_segments", "device_option_problem",
]
