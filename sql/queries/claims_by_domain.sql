-- How often each claim holds, per model and domain (and over all domains), zero-shot and with demonstrations
-- METHOD.md §10. Counts partitions of the current claims by verdict; setting = 'zero-shot' (shot 0) or
-- 'few-shot' (shot >= 1); domain = 'all' rows pool the domains (GROUPING SETS). share_holds = n_holds /
-- n_tested, where n_tested leaves out 'not tested' partitions.
SELECT model,
       CASE WHEN grouping(domain) = 1 THEN 'all' ELSE coalesce(domain, 'unknown') END AS domain,
       CASE WHEN shot = 0 THEN 'zero-shot' ELSE 'few-shot' END AS setting,
       step, claim,
       count(*) AS n_partitions,
       count(*) FILTER (WHERE verdict <> 'not tested') AS n_tested,
       count(*) FILTER (WHERE verdict = 'holds') AS n_holds,
       count(*) FILTER (WHERE verdict = 'does not') AS n_does_not,
       count(*) FILTER (WHERE verdict = 'inconclusive') AS n_inconclusive,
       count(*) FILTER (WHERE verdict = 'holds') / nullif(count(*) FILTER (WHERE verdict <> 'not tested'), 0)
           AS share_holds
FROM claims
GROUP BY GROUPING SETS ((model, domain, setting, step, claim), (model, setting, step, claim))
ORDER BY model, domain = 'all', domain, setting DESC, step, claim
