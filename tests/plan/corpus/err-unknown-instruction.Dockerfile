FORM alpine
