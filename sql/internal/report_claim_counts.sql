-- How often each claim holds among the claims a report shows (registered as _report_claims): by model and domain
-- (every shot pooled; grouped_by = 'domain') and by model and setting (every domain pooled; grouped_by = 'setting',
-- setting 'zero-shot' for shot 0, 'few-shot' otherwise). n_tested leaves out 'not tested' partitions.
SELECT CASE WHEN grouping(domain) = 0 THEN 'domain' ELSE 'setting' END AS grouped_by, model,
       CASE WHEN grouping(domain) = 0 THEN coalesce(domain, 'unknown') END AS domain, setting, claim,
       count(*) FILTER (WHERE verdict <> 'not tested') AS n_tested,
       count(*) FILTER (WHERE verdict = 'holds') AS n_holds,
       count(*) FILTER (WHERE verdict = 'does not') AS n_does_not,
       count(*) FILTER (WHERE verdict = 'inconclusive') AS n_inconclusive
FROM (SELECT *, CASE WHEN shot = 0 THEN 'zero-shot' ELSE 'few-shot' END AS setting FROM _report_claims)
GROUP BY GROUPING SETS ((model, domain, claim), (model, setting, claim))
ORDER BY grouped_by, model, domain, setting DESC, claim
