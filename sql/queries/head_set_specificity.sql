-- Task specificity of every head set: its summed path-patching effect under subject corruption vs relation-word corruption, per model, relation and shot
-- METHOD.md §4. set_effect_pct: sum of the set's head effects% on M when each head's output is set to
-- its mean over subject-corrupted prompts; set_effect_relation_pct: the same with the output taken from
-- the same prompt with its relation word replaced (NULL when the relation has no replaceable word,
-- relation_corruption says which words were replaced and which templates name none). Over the prompts answered
-- correctly (n_correct of n_prompts). specificity = set_effect_pct - set_effect_relation_pct: negative = the
-- heads carry the subject more than the task word.
SELECT model, relation, shot, heads, n_heads, set_effect_pct, set_effect_relation_pct,
       set_effect_pct - set_effect_relation_pct AS specificity,
       relation_corruption, n_prompts, n_correct, skipped_reason
FROM head_sets
ORDER BY model, relation, shot
