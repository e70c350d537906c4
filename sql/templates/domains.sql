-- _domains: each relation's domain, as last recorded in the relations record table (every table view
-- joins it; a relation no run has recorded yet, e.g. in a store older than the record, has domain NULL).
CREATE VIEW _domains AS SELECT relation, arg_max(domain, recorded_at) AS domain FROM _relations GROUP BY relation;
