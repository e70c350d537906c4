-- Top 10 heads by mean DLA onto the answer token (clean prompts) per model, relation and shot
SELECT model, relation, shot, layer, head,
       avg(dla) AS mean_dla,
       count(*) AS n,
       row_number() OVER (PARTITION BY model, relation, shot
                          ORDER BY avg(dla) DESC, layer, head) AS "rank"
FROM head_dla_answer
WHERE variant = 'clean'
GROUP BY model, relation, shot, layer, head
QUALIFY "rank" <= 10
ORDER BY model, relation, shot, "rank"
