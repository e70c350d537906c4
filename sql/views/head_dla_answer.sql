-- head_dla_answer: direct logit attribution of every head's output at END onto the prompt's answer
-- token, computed from the stored vectors (METHOD.md §2):
--   DLA(c, y) = sum_i g_i * (c_i - mu_c * [layernorm]) * u_i / sigma_f
--             = <c, w> / sigma_f   with  w = g*u - [layernorm] * mean(g*u)
-- (the centering moves onto w because sum_i (c_i - mu_c) v_i = sum_i c_i (v_i - mean(v))).
-- c = heads.output, g = model_info.final_norm_gain, u = unembed.w_u of prompts.answer_token_id,
-- sigma_f = logits.final_norm_scale, all of the same (current) capture. w is computed once per (model,
-- relation, shot, token); each head then costs one inner product. Arithmetic in DOUBLE.
CREATE OR REPLACE VIEW head_dla_answer AS
WITH mi AS (
    SELECT model, relation, shot, final_norm_gain::DOUBLE[] AS g, norm_kind = 'layernorm' AS centered
    FROM model_info
),
answers AS (
    SELECT DISTINCT model, relation, shot, answer_token_id AS token_id
    FROM prompts
),
gu AS (
    SELECT u.model, u.relation, u.shot, u.token_id, mi.centered,
           list_transform(u.w_u::DOUBLE[], lambda x, i: x * mi.g[i]) AS gu
    FROM unembed AS u
    JOIN mi ON u.model = mi.model AND u.relation = mi.relation AND u.shot = mi.shot
    SEMI JOIN answers AS a
        ON u.model = a.model AND u.relation = a.relation AND u.shot = a.shot AND u.token_id = a.token_id
),
gu_mean AS (
    SELECT *, CASE WHEN centered THEN list_avg(gu) ELSE 0 END AS shift FROM gu
),
w AS (
    SELECT model, relation, shot, token_id, list_transform(gu, lambda x: x - shift) AS w
    FROM gu_mean
)
SELECT h.model, h.relation, h.shot, h.variant, h.prompt_id, h.layer, h.head,
       list_dot_product(h.output::DOUBLE[], w.w) / l.final_norm_scale AS dla
FROM heads AS h
JOIN prompts AS p
    ON h.model = p.model AND h.relation = p.relation AND h.shot = p.shot
   AND h.variant = p.variant AND h.prompt_id = p.prompt_id
JOIN logits AS l
    ON h.model = l.model AND h.relation = l.relation AND h.shot = l.shot
   AND h.variant = l.variant AND h.prompt_id = l.prompt_id
JOIN w
    ON h.model = w.model AND h.relation = w.relation AND h.shot = w.shot
   AND p.answer_token_id = w.token_id;
