-- Every figure of the current results (for `factrecall plots`).
SELECT model, relation, shot, stage, name, png FROM plots ORDER BY ALL
