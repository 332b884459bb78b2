-- Argo CD health check for stagefleet.io/ImageBuild.
-- argocd-cm key: resource.customizations.health.stagefleet.io_ImageBuild
--
-- Decision order (mirrors kstatus, see docs/gitops.md and operator/stagefleet/health.py):
--   1. being deleted                                   -> Progressing
--   2. no status / status.observedGeneration missing   -> Progressing (the operator has not seen it yet)
--   3. observedGeneration ~= metadata.generation       -> Progressing (a spec change is not picked up yet)
--   4. first condition in list order that is True among Reconciling / Stalled:
--        Reconciling -> Progressing (Suspended when its reason is Suspended: spec.suspend paused the build
--        on purpose and it resumes when that is false, like a suspended CronJob),
--        Stalled -> Degraded (e.g. a referenced Secret is missing)
--   5. phase Failed or Cancelled                       -> Degraded (no image was produced; Cancelled means
--        the timeout or a superseding spec stopped it, nothing a user would call "paused", hence not Suspended)
--   6. phase Succeeded and condition Ready=True        -> Healthy
--   7. anything else (Pending/Planning/Building, or Succeeded before Ready is written) -> Progressing
local hs = {}

local function condition_message(c, fallback)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "ImageBuild is being deleted"
  return hs
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the stagefleet operator to observe the ImageBuild"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "ImageBuild generation is " .. tostring(generation) ..
    ", but latest observed generation is " .. tostring(status.observedGeneration)
  return hs
end

local ready = nil
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Reconciling" and c.status == "True" then
      if c.reason == "Suspended" then
        hs.status = "Suspended"
        hs.message = condition_message(c, "Suspended")
        return hs
      end
      hs.status = "Progressing"
      hs.message = condition_message(c, "Reconciling")
      return hs
    end
    if c.type == "Stalled" and c.status == "True" then
      hs.status = "Degraded"
      hs.message = condition_message(c, "Stalled")
      return hs
    end
    if c.type == "Ready" then
      ready = c
    end
  end
end

local phase = status.phase
if phase == "Failed" or phase == "Cancelled" then
  hs.status = "Degraded"
  if status.message ~= nil and status.message ~= "" then
    hs.message = phase .. ": " .. status.message
  else
    hs.message = phase
  end
  return hs
end

if phase == "Succeeded" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  local digest = nil
  if status.image ~= nil then
    digest = status.image.digest
  end
  if digest ~= nil and digest ~= "" then
    hs.message = "Built " .. tostring(status.image.name or "") .. "@" .. digest
  else
    hs.message = condition_message(ready, "Succeeded")
  end
  return hs
end

hs.status = "Progressing"
if phase ~= nil then
  hs.message = "Phase " .. phase
  if status.message ~= nil and status.message ~= "" then
    hs.message = hs.message .. ": " .. status.message
  end
else
  hs.message = "Waiting for the build to start"
end
return hs
