FROM ${IMAGE:?required}
