from alpine:3.19 as Builder
run echo hi
from busybox:1.36 as Final
copy --from=BUILDER /x /x
