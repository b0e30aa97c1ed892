from __future__ import annotations
from .allocator import (
    allocator_field, allocator_choice, mimalloc_library, allocator_in_use, reexec_with_allocator, release_free_memory,
)
from .analysis import (
    FEATURE_COLUMNS, owner_turns, chat_labels, add_local_time, volume_stats, time_stats, word_stats, language_stats,
    sentiment_stats, owner_name, analyze_messages,
)
from .authorship import (
    strip_speaker, train_owner_classifier, owner_probabilities, discriminator_auc, halves, mauve_score,
)
from .chat_format import (
    MESSAGES, OWNER_ROLE, OTHER_ROLE, CHAT_TYPES, BUBBLE_DELIMITER, SILENT_REPLY, SYSTEM_PROMPT_BASE,
    build_system_prompt, format_user_turn, split_bubbles, CHATML_TRAINING_TEMPLATE, LLAMA3_TRAINING_TEMPLATE,
    training_chat_template, end_of_turn_token, ensure_training_template, split_target, chat_token_ids,
    stop_token_ids, untempered_token_ids, trim_context,
)
from .sampling import SAMPLE_TOP_K, untempered_stop_logits, sample_next, stop_processors, llama_sampler
from .eval_generation import (
    eval_example, score_and_generate, perplexity_from_nll, generate_replies,
)
from .export import (
    DROP_REASONS, REPAIR_REASONS, parse_thread_documents, parse_export, merge_thread_records, infer_owner,
)
from .export_files import (
    IngestLimits, discover_export, json_too_deep, read_entry_bytes, detect_file_kind, sanitize_header, DocumentError,
    load_json_document, instagram_old_to_documents, read_thread_group, iter_thread_groups,
)
from .export_paths import (
    EXPORT_SECTIONS, DEFAULT_SECTIONS, redact_path, shown_export_path, entry_display_path,
)
from .gate import (
    split_fingerprint, paired_interval, compare_scorecards, gate_passed, load_baseline_scorecard, fool_rate,
)
from .metric_defs import (
    SIDES, Metric, METRICS, METRIC_BY_KEY, METRIC_KEYS, METRIC_DEFINITIONS, SEED_CLAIMS, CI_METRICS, GATE_TOLERANCES,
    PII_PROBES, MEMORIZATION_SPAN, MEMORIZATION_MIN_TURN, HITS_CANDIDATES,
)
from .metrics import (
    STYLE_KEYS, sentiment_alignments, language_matches, bleu_statistics, bleu_from_statistics, rouge_l_scores,
    load_text_encoder, encode_texts, repetition_scores, memo_tokens, memorization_index, memorized,
    training_pii_values, pii_findings, pii_probe_contexts, bootstrap_ci, mean_of, build_reference, score_replies,
)
from .metrics_model import (
    hits_candidates, candidate_loglik, hits_at_1, fixed_length_speed, peak_memory,
)
from .metrics_style import (
    BERTSCORE_LAYER, reply_features, owner_profile, style_stats, echo_share, relevance_scores, telex, bertscore_text,
    load_bertscorer, bertscore_f1,
)
from .models import (
    DEFAULT_BASE_MODEL, bundled_gguf_path, convert_gguf_to_hf, resolve_base_model, load_tokenizer, AdapterRef,
    resolve_adapter, adapter_base_model, load_twin_tokenizer, load_model,
)
from .name_lexicon import (
    VOCATIVE_AFTER, VI_GIVEN, VI_MENTION_BEFORE, VOCATIVE_BEFORE, VI_GIVEN_SET, VI_FAMILY, VI_SYLLABLES,
    common_words, other_names, en_stop_words, is_chat_noise, is_vi_name_syllable, has_vi_letters, Span,
    find_name_spans,
)
from .ner import (
    DEFAULT_NER_MODEL, BATCH_SIZE, load_person_ner, PersonNER,
)
from .pii import (
    DEFAULT_KEY_FILE, KEY_BYTES, PII_KINDS, load_or_create_key, is_vietnamese_name, message_fingerprint, Anonymizer,
)
from .pii_detect import (
    classify_number, detect_pii, find_pii,
)
from .plots import (
    WEEKDAYS, LANGUAGE_COLORS, PUNCTUATION_KEYS, plot_label, plot_volume_monthly, plot_top_chats,
    plot_heatmap_weekday_hour, plot_reply_latency, plot_length_per_message, plot_bubbles_per_turn, plot_top_words,
    plot_language_mix, plot_sentiment_over_time, plot_punctuation, draw_plots,
)
from .precision import (
    NATIVE_BF16_FLAGS, Precision, cpuinfo_flags, torch_cpu_flags, machine_cpu_flags, native_bf16_flags,
    resolve_cpu_precision, apply_cpu_precision, frozen_linears_to_bf16, cpu_bf16_inference,
)
from .preferences import (
    PREFERENCE_STORE, RATING_STORE, SELF_PLAY_STORE, PAIR_COLUMNS, RATING_COLUMNS, load_preference_data,
    self_play_contexts, self_play_pairs, build_self_play, preference_config, preference_trainer,
    build_preference_run,
)
from .prepare import (
    messages_schema, samples_schema, group_thread_parts, resolve_owner, SampleSettings, ThreadSamples,
    thread_chat_id, build_thread_samples, new_since_previous, IngestTally, ingest_report, ingest_summary_rows,
)
from .runtime import (
    library_versions, git_commit, git_changes, git_dirty, save_run_config, UserError, run_main, cpu_threads, simme_cache_dir,
    process_peak_memory_mb, load_script,
)
from .samples import (
    split_sessions, group_bursts, pack_windows, silent_cut_points, render_lengths, truncate_to_tokens, split_by_time,
)
from .scorecard import (
    TABLE_HEADER, scorecard_rows, metric_docs_markdown, scorecard_markdown, write_metric_docs,
)
from .selection import (
    is_chat_id, section_list, ChatSelection,
)
from .serving.access import (
    looks_like_hub_id, allowed_adapter_dir, needs_hub,
)
from .serving.batch_decoder import (
    TwinBusy, common_prefix_len, snapshot_seq, restore_seq, BatchDecoder,
)
from .serving.chat_ui import (
    auto_temperature, SILENT_NOTE, message_text, flatten_history, expand_turns, parse_auth, build_app_messages,
    CONTROL_TOKEN_RE, ZERO_WIDTH_SPACE, neutralize_control_tokens, clip_text, clip_number, cap_history,
    public_message, LoginThrottle, stream_bubbles, PII_MASKS, mask_pii, mask_pii_streaming, parse_names,
    rank_contacts, typing_gap_seconds, reply_span, is_blind_testable, new_blind_round, score_guess, format_score,
)
from .serving.gguf_export import (
    GGUF_FTYPES, DEFAULT_GGUF_QUANT, AMX_GGUF_QUANT, gguf_export_key, write_llama_gguf, export_twin_gguf,
    prune_gguf_cache, default_gguf_quant,
)
from .serving.llama_cpp import (
    LLAMA_CPP_AMX_FIX, LLAMA_CPP_FA_PREFILL, LLAMA_CPP_AMX_BF16, AMX_BF16_MIN_TOKENS, LlamaCppOptions,
    llama_prompt_logits, nll_of_logits, llama_cpp_extra_bufts, llama_cpp_amx_usable, amx_bf16_min_tokens,
    llama_cpp_weight_buffers, repack_pattern,
)
from .serving.loader import (
    load_twin, load_twin_transformers,
)
from .serving.model_thread import (
    ModelThread,
)
from .serving.modelfile import (
    GO_TEMPLATES, STOP_TOKENS, DEFAULT_SAMPLING, template_family, plain_chat_template, modelfile_text,
)
from .serving.space_export import (
    SPACE_PACKAGES, LLAMA_CPP_WHEEL_INDEX, STYLE_CARD_KEYS, SpaceExport, space_requirements, space_readme,
    check_space_dir, write_space, load_blind_samples, push_space,
)
from .serving.twin import (
    reply_cache_key, TwinModel,
)
from .serving.twin_dir import (
    TWIN_INFO, TWIN_FORMAT, export_twin_dir, twin_dir_path, read_twin_info, load_twin_dir,
)
from .settings import (
    AppSettings, SPACE_SETTINGS_FILE, folder_defaults, ENV_NAMES, env_name, is_loopback,
)
from .stage_io import (
    PREPARED_DIR, ANALYSIS_DIR, ADAPTER_DIR, EVAL_DIR, load_prepared_dataset, check_owner_turns,
    append_to_disk_dataset, carry_entries, replace_dir, atomic_output_dir, make_private, private_spool,
    sweep_dead_spools, feedback_usage,
)
from .style_card import (
    build_style_card, scorable_reply, reply_style_card, emoji_profile, style_similarity,
)
from .supervised_loss import (
    supervised_log_probs, compact_lm_head,
)
from .system_text import (
    classify_system_text, has_surrogates, remove_surrogates, fix_mojibake, normalize_text,
)
from .tables import (
    format_number, format_metric, print_table, format_grid, replace_marked_section,
)
from .text_features import (
    LENGTH_CHAR_EDGES, LENGTH_WORD_EDGES, TYPING_GAP_EDGES, QUANTILES, MAX_BUBBLES_BIN, URL_PATTERN, extract_emojis,
    tokenize_words, vi_letters, strip_diacritics, detect_language, sentiment_score, textblob_polarity,
    histogram_probs, distribution_similarity, text_style_flags, punctuation_profile, message_features, quantiles,
    describe_distribution, lexical_diversity, bubbles_distribution, language_mix, code_switch_rate, stop_words,
)
from .time_budget import (
    CALIBRATION_STEPS, REPLAN_FRACTIONS, plan_position, stretched, steps_that_fit, time_budget_callback,
)
from .training import (
    trained_segments, device_option_problem, REDACTED, redact_private, wandb_run_dir, private_wandb_callback,
    eager_attention_note, loraplus_optimizer,
)

__all__ = [
    'allocator_field', 'allocator_choice', 'mimalloc_library', 'allocator_in_use', 'reexec_with_allocator',
    'release_free_memory',
    'FEATURE_COLUMNS', 'owner_turns', 'chat_labels', 'add_local_time', 'volume_stats', 'time_stats', 'word_stats',
    'language_stats', 'sentiment_stats', 'owner_name', 'analyze_messages', 'strip_speaker', 'train_owner_classifier',
    'owner_probabilities', 'discriminator_auc', 'halves', 'mauve_score', 'MESSAGES', 'OWNER_ROLE', 'OTHER_ROLE',
    'CHAT_TYPES', 'BUBBLE_DELIMITER', 'SILENT_REPLY', 'SYSTEM_PROMPT_BASE', 'build_system_prompt',
    'format_user_turn', 'split_bubbles', 'CHATML_TRAINING_TEMPLATE', 'LLAMA3_TRAINING_TEMPLATE',
    'training_chat_template', 'end_of_turn_token', 'ensure_training_template', 'split_target', 'chat_token_ids',
    'stop_token_ids', 'untempered_token_ids', 'trim_context', 'eval_example', 'score_and_generate', 'perplexity_from_nll',
    'generate_replies', 'DROP_REASONS', 'REPAIR_REASONS', 'parse_thread_documents', 'parse_export',
    'merge_thread_records', 'infer_owner', 'IngestLimits', 'discover_export', 'json_too_deep', 'read_entry_bytes',
    'detect_file_kind', 'sanitize_header', 'DocumentError', 'load_json_document', 'instagram_old_to_documents',
    'read_thread_group', 'iter_thread_groups', 'EXPORT_SECTIONS', 'DEFAULT_SECTIONS', 'redact_path',
    'shown_export_path', 'entry_display_path', 'split_fingerprint', 'paired_interval', 'compare_scorecards',
    'gate_passed', 'load_baseline_scorecard', 'fool_rate', 'SIDES', 'Metric', 'METRICS', 'METRIC_BY_KEY',
    'METRIC_KEYS', 'METRIC_DEFINITIONS', 'SEED_CLAIMS', 'CI_METRICS', 'GATE_TOLERANCES', 'PII_PROBES',
    'MEMORIZATION_SPAN', 'MEMORIZATION_MIN_TURN', 'HITS_CANDIDATES', 'STYLE_KEYS', 'sentiment_alignments',
    'language_matches', 'bleu_statistics', 'bleu_from_statistics', 'rouge_l_scores', 'load_text_encoder',
    'encode_texts', 'repetition_scores', 'memo_tokens', 'memorization_index', 'memorized', 'training_pii_values',
    'pii_findings', 'pii_probe_contexts', 'bootstrap_ci', 'mean_of', 'build_reference', 'score_replies',
    'hits_candidates', 'candidate_loglik', 'hits_at_1', 'fixed_length_speed', 'peak_memory', 'BERTSCORE_LAYER',
    'reply_features', 'owner_profile', 'style_stats', 'echo_share', 'relevance_scores', 'telex', 'bertscore_text',
    'load_bertscorer', 'bertscore_f1', 'DEFAULT_BASE_MODEL', 'bundled_gguf_path', 'convert_gguf_to_hf',
    'resolve_base_model', 'load_tokenizer', 'AdapterRef', 'resolve_adapter', 'adapter_base_model',
    'load_twin_tokenizer', 'load_model', 'VOCATIVE_AFTER', 'VI_GIVEN', 'VI_MENTION_BEFORE', 'VOCATIVE_BEFORE',
    'VI_GIVEN_SET', 'VI_FAMILY', 'VI_SYLLABLES', 'common_words', 'other_names', 'en_stop_words', 'is_chat_noise',
    'is_vi_name_syllable', 'has_vi_letters', 'Span', 'find_name_spans', 'DEFAULT_NER_MODEL', 'BATCH_SIZE',
    'load_person_ner', 'PersonNER', 'DEFAULT_KEY_FILE', 'KEY_BYTES', 'PII_KINDS', 'load_or_create_key',
    'is_vietnamese_name', 'message_fingerprint', 'Anonymizer', 'classify_number', 'detect_pii', 'find_pii',
    'WEEKDAYS', 'LANGUAGE_COLORS', 'PUNCTUATION_KEYS', 'plot_label', 'plot_volume_monthly', 'plot_top_chats',
    'plot_heatmap_weekday_hour', 'plot_reply_latency', 'plot_length_per_message', 'plot_bubbles_per_turn',
    'plot_top_words', 'plot_language_mix', 'plot_sentiment_over_time', 'plot_punctuation', 'draw_plots',
    'NATIVE_BF16_FLAGS', 'Precision', 'cpuinfo_flags', 'torch_cpu_flags', 'machine_cpu_flags', 'native_bf16_flags',
    'resolve_cpu_precision', 'apply_cpu_precision', 'frozen_linears_to_bf16', 'cpu_bf16_inference', 'PREFERENCE_STORE', 'RATING_STORE', 'SELF_PLAY_STORE',
    'PAIR_COLUMNS', 'RATING_COLUMNS', 'load_preference_data', 'self_play_contexts', 'self_play_pairs',
    'build_self_play', 'preference_config', 'preference_trainer', 'build_preference_run', 'messages_schema',
    'samples_schema', 'group_thread_parts', 'resolve_owner', 'SampleSettings', 'ThreadSamples', 'thread_chat_id',
    'build_thread_samples', 'new_since_previous', 'IngestTally', 'ingest_report', 'ingest_summary_rows',
    'library_versions', 'git_commit', 'git_changes', 'git_dirty', 'save_run_config', 'UserError', 'run_main', 'cpu_threads', 'simme_cache_dir',
    'process_peak_memory_mb', 'load_script', 'split_sessions', 'group_bursts', 'pack_windows', 'silent_cut_points',
    'render_lengths', 'truncate_to_tokens', 'split_by_time', 'TABLE_HEADER', 'scorecard_rows',
    'metric_docs_markdown', 'scorecard_markdown', 'write_metric_docs', 'is_chat_id', 'section_list', 'ChatSelection',
    'looks_like_hub_id', 'allowed_adapter_dir', 'needs_hub', 'SAMPLE_TOP_K', 'untempered_stop_logits', 'sample_next', 'stop_processors', 'llama_sampler', 'TwinBusy', 'common_prefix_len',
    'snapshot_seq', 'restore_seq', 'BatchDecoder', 'auto_temperature', 'SILENT_NOTE', 'message_text',
    'flatten_history', 'expand_turns', 'parse_auth', 'build_app_messages', 'CONTROL_TOKEN_RE', 'ZERO_WIDTH_SPACE',
    'neutralize_control_tokens', 'clip_text', 'clip_number', 'cap_history', 'public_message', 'LoginThrottle',
    'stream_bubbles', 'PII_MASKS', 'mask_pii', 'mask_pii_streaming', 'parse_names', 'rank_contacts',
    'typing_gap_seconds', 'reply_span', 'is_blind_testable', 'new_blind_round', 'score_guess', 'format_score',
    'GGUF_FTYPES', 'DEFAULT_GGUF_QUANT', 'AMX_GGUF_QUANT', 'gguf_export_key', 'write_llama_gguf', 'export_twin_gguf',
    'prune_gguf_cache', 'default_gguf_quant', 'LLAMA_CPP_AMX_FIX', 'LLAMA_CPP_FA_PREFILL', 'LLAMA_CPP_AMX_BF16',
    'AMX_BF16_MIN_TOKENS', 'LlamaCppOptions', 'llama_prompt_logits', 'nll_of_logits', 'llama_cpp_extra_bufts',
    'llama_cpp_amx_usable', 'amx_bf16_min_tokens', 'llama_cpp_weight_buffers', 'repack_pattern', 'load_twin',
    'load_twin_transformers', 'ModelThread', 'GO_TEMPLATES', 'STOP_TOKENS', 'DEFAULT_SAMPLING', 'template_family',
    'plain_chat_template', 'modelfile_text', 'SPACE_PACKAGES', 'LLAMA_CPP_WHEEL_INDEX', 'STYLE_CARD_KEYS',
    'SpaceExport', 'space_requirements', 'space_readme', 'check_space_dir', 'write_space', 'load_blind_samples',
    'push_space', 'reply_cache_key', 'TwinModel', 'TWIN_INFO', 'TWIN_FORMAT', 'export_twin_dir', 'twin_dir_path',
    'read_twin_info', 'load_twin_dir', 'AppSettings', 'SPACE_SETTINGS_FILE', 'folder_defaults', 'ENV_NAMES',
    'env_name', 'is_loopback', 'PREPARED_DIR', 'ANALYSIS_DIR', 'ADAPTER_DIR', 'EVAL_DIR', 'load_prepared_dataset',
    'check_owner_turns', 'append_to_disk_dataset', 'carry_entries', 'replace_dir', 'atomic_output_dir',
    'make_private', 'private_spool', 'sweep_dead_spools', 'feedback_usage', 'build_style_card', 'scorable_reply',
    'reply_style_card', 'emoji_profile', 'style_similarity', 'supervised_log_probs', 'compact_lm_head',
    'classify_system_text', 'has_surrogates', 'remove_surrogates', 'fix_mojibake', 'normalize_text', 'format_number',
    'format_metric', 'print_table', 'format_grid', 'replace_marked_section', 'LENGTH_CHAR_EDGES', 'LENGTH_WORD_EDGES', 'TYPING_GAP_EDGES',
    'QUANTILES', 'MAX_BUBBLES_BIN', 'URL_PATTERN', 'extract_emojis', 'tokenize_words', 'vi_letters',
    'strip_diacritics', 'detect_language', 'sentiment_score', 'textblob_polarity', 'histogram_probs',
    'distribution_similarity', 'text_style_flags', 'punctuation_profile', 'message_features', 'quantiles',
    'describe_distribution', 'lexical_diversity', 'bubbles_distribution', 'language_mix', 'code_switch_rate',
    'stop_words', 'CALIBRATION_STEPS', 'REPLAN_FRACTIONS', 'plan_position', 'stretched', 'steps_that_fit', 'time_budget_callback',
    'trained_segments', 'device_option_problem', 'loraplus_optimizer', 'REDACTED', 'redact_private', 'wandb_run_dir',
    'private_wandb_callback', 'eager_attention_note',
]
