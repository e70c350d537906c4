-- Attention END->S vs DLA onto the subject per prompt for the 5 heads with the largest |Pearson r| per shot of one model and relation (the paper's scatter)
-- METHOD.md §4. One row per clean prompt x head; "rank" 1 = largest |pearson_r| (ties by layer, head).
WITH top AS (
    SELECT model, relation, shot, layer, head, pearson_r, r_lo, r_hi, in_head_set,
           row_number() OVER (PARTITION BY model, relation, shot
                              ORDER BY abs(pearson_r) DESC, layer, head) AS "rank"
    FROM head_summary
    WHERE model = $model AND relation = $relation AND pearson_r IS NOT NULL
    QUALIFY "rank" <= 5
)
SELECT t.model, t.relation, t.shot, t."rank",
       'L' || t.layer || '.H' || t.head AS head_name, t.layer, t.head,
       t.pearson_r, t.r_lo, t.r_hi, t.in_head_set,
       p.prompt_id, p.attn_to_s, p.dla_subject
FROM top AS t
JOIN head_prompts AS p
  ON p.model = t.model AND p.relation = t.relation AND p.shot = t.shot
 AND p.layer = t.layer AND p.head = t.head
ORDER BY t.shot, t."rank", p.prompt_id
