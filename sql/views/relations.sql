-- relations: each relation the store's runs used, as last recorded: source, domain (factual, commonsense,
-- linguistic, bias, user), counts and the hash of its content. Join on relation to group by domain.
CREATE VIEW relations AS
SELECT relation, source, domain, n_facts, n_subjects, n_templates, n_prompts, content_hash, source_file,
       run_id, recorded_at
FROM _relations
QUALIFY row_number() OVER (PARTITION BY relation ORDER BY recorded_at DESC) = 1;
