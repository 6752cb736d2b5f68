// Validates Istio resources against Istio's own CRD schemas (the @kubernetes-models/istio
// package, generated from Istio's CRDs). Reads a JSON array of resources on stdin and prints
// a JSON array with, for each, null (valid) or the validation error's message.
import * as security from "@kubernetes-models/istio/security.istio.io/v1";
import * as networking from "@kubernetes-models/istio/networking.istio.io/v1";

const MODELS = new Map(
  [security, networking].flatMap((group) =>
    Object.values(group).map((model) => [`${model.apiVersion}/${model.kind}`, model]),
  ),
);

function check(resource) {
  const model = MODELS.get(`${resource.apiVersion}/${resource.kind}`);
  if (model === undefined) {
    return `no schema for ${resource.apiVersion} ${resource.kind}`;
  }
  try {
    new model(resource).validate();
    return null;
  } catch (error) {
    return String(error.message ?? error);
  }
}

let input = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) input += chunk;
process.stdout.write(JSON.stringify(JSON.parse(input).map(check)));
